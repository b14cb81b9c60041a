"""Evaluation results as a table row, a CSV and a JSON file.

Why in the service layer: the app's Evaluate tab and ``python -m retrieval
evaluate --export`` write the same files, so a figure copied from one can be
checked against the other. The JSON carries each report's full configuration
(backbone, pooling, metric, re-ranking, protocol), which the CSV cannot.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from ..evaluation import EvalReport as Report

ROW_COLUMNS = ("configuration", "protocol", "metric", "rerank", "post", "mAP", "P@1", "P@5", "P@10", "R@10",
               "nDCG@10", "queries", "ms/query")


def protocol(report: Report) -> str:
    """"leave-one-out", or "held-out: SOURCE" with the queries' source as the user named it."""
    held = report.config.get("queries")
    return f"held-out: {held['source']}" if held else "leave-one-out"


def evaluation_row(report: Report, configuration: str) -> dict:
    """One line of the comparison table: the figures rounded as people compare them (4 places)."""
    search = report.config.get("search", {})
    return {"configuration": configuration, "protocol": protocol(report),
            "metric": search.get("metric", ""), "rerank": search.get("rerank", ""), "post": search.get("whiten", ""),
            "mAP": round(report.map, 4), "P@1": round(report.p_at[1], 4), "P@5": round(report.p_at[5], 4),
            "P@10": round(report.p_at[10], 4), "R@10": round(report.r_at[10], 4),
            "nDCG@10": round(report.ndcg_at_10, 4), "queries": report.queries,
            "ms/query": round(1000 * report.seconds / max(report.queries, 1), 3)}


def write_evaluation(folder: Path, rows: list[dict], reports: list[Report], collection: str) -> tuple[Path, Path]:
    """``evaluation-STAMP.csv`` (the table) and ``.json`` (every report in full) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    csv_path, json_path = folder / f"evaluation-{stamp}.csv", folder / f"evaluation-{stamp}.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"collection": collection, "reports": [r.to_json() for r in reports]}, indent=2))
    return csv_path, json_path
