"""Evaluation exports: the app's Evaluate tab and ``evaluate --export`` write the same files from real reports."""

import csv
import json

from retrieval.cli import main as cli
from retrieval.service.exports import ROW_COLUMNS, evaluation_row, write_evaluation


def test_rows_and_files_from_a_real_evaluation(studio, indexed, tmp_path):
    report = studio.evaluate("photos")
    row = evaluation_row(report, "lite1")
    assert tuple(row) == ROW_COLUMNS
    assert row["protocol"] == "leave-one-out" and row["metric"] == report.config["search"]["metric"]
    assert row["mAP"] == round(report.map, 4) and row["queries"] == report.queries
    csv_path, json_path = write_evaluation(tmp_path / "out", [row], [report], "photos")
    with csv_path.open() as f:
        (read,) = list(csv.DictReader(f))
    assert read["configuration"] == "lite1" and float(read["mAP"]) == row["mAP"]
    saved = json.loads(json_path.read_text())
    assert saved["collection"] == "photos"
    assert saved["reports"][0]["config"]["key"] == report.config["key"]  # the full configuration travels along
    assert saved["reports"][0]["map"] == report.map


def test_the_cli_exports_the_same_files(tmp_path):
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "assets" / "demo"
    db = tmp_path / "demo.sqlite"
    assert cli(["index", str(demo), "--db", str(db), "--model", "colorhist", "--quiet"]) == 0
    out = tmp_path / "exports"
    assert cli(["evaluate", "--db", str(db), "--model", "colorhist", "--metadata", "--export", str(out)]) == 0
    (csv_path,) = out.glob("evaluation-*.csv")
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["configuration"].split(" ")[0] for r in rows] == ["colorhist", "metadata"]
    assert all(0 < float(r["mAP"]) <= 1 for r in rows)
    (json_path,) = out.glob("evaluation-*.json")
    assert len(json.loads(json_path.read_text())["reports"]) == 2
