"""The package as it ships: metadata that must agree, and an installed copy run from outside the checkout.

The install test builds a virtual environment that reuses the installed
dependencies (``--system-site-packages``), installs the package from a copy of
the checkout (so no ``build/`` or ``*.egg-info`` lands in it), and runs the
``retrieval`` console command from a folder outside the checkout with HOME and
the data folder in the test's temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(path: Path) -> list[str]:
    """The requirement lines pip would read from ``path``, following ``-r`` includes."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r"):
            out += _requirements(path.parent / line[2:].strip())
        else:
            out.append(line)
    return out


def _normal(lines) -> set[str]:
    return {str(Requirement(line)) for line in lines}


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "the Space's YAML front matter must open README.md on its first line"
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def test_pyproject_dependencies_are_requirements_txt():
    """``pip install .`` and ``pip install -r requirements.txt`` (the Space's install) get the same packages."""
    assert _normal(PYPROJECT["project"]["dependencies"]) == _normal(_requirements(ROOT / "requirements.txt"))


def test_scale_extra_is_requirements_scale_txt():
    """``pip install '.[scale]'`` and ``pip install -r requirements-scale.txt`` get the same packages."""
    assert _normal(PYPROJECT["project"]["optional-dependencies"]["scale"]) == \
        _normal(_requirements(ROOT / "requirements-scale.txt"))


def test_gpu_requirements_swap_only_tensorflow():
    """requirements-gpu.txt is requirements.txt with TensorFlow's CUDA libraries added (the and-cuda extra)."""
    def no_tf(lines):
        return {r for r in _normal(lines) if not Requirement(r).name.startswith("tensorflow")}

    gpu, cpu = _requirements(ROOT / "requirements-gpu.txt"), _requirements(ROOT / "requirements.txt")
    assert no_tf(gpu) == no_tf(cpu)
    assert [Requirement(r).name for r in _normal(gpu) if Requirement(r).name.startswith("tensorflow")] == ["tensorflow"]
    assert [Requirement(r).extras for r in _normal(gpu) if Requirement(r).name == "tensorflow"] == [{"and-cuda"}]


def test_space_front_matter_agrees_with_the_requirements():
    meta = front_matter()
    gradio = [Requirement(r) for r in _requirements(ROOT / "requirements-common.txt") if r.startswith("gradio")]
    assert len(gradio) == 1 and str(gradio[0].specifier) == f"=={meta['sdk_version']}", \
        "sdk_version must be the exact Gradio version requirements-common.txt pins"
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    assert isinstance(meta["python_version"], str) and meta["python_version"] == "3.11"
    assert PYPROJECT["project"]["requires-python"] == f">={meta['python_version']}"
    assert len(meta["short_description"]) <= 60
    assert meta["suggested_hardware"] in ("cpu-basic", "cpu-upgrade")
    assert meta["license"] == "apache-2.0" and "Apache License" in (ROOT / "LICENSE").read_text()
    for key in ("title", "emoji", "colorFrom", "colorTo"):
        assert meta[key]


def test_listed_packages_are_every_engine_package():
    """A new subpackage of retrieval/ must be listed in pyproject.toml, or the installed CLI would miss it."""
    from setuptools import find_packages

    found = find_packages(str(ROOT), include=["retrieval", "retrieval.*"])
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted([*found, "retrieval._demo"])
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["retrieval._demo"] == "assets/demo"


def test_every_cli_argument_has_help():
    """Every option, positional and subcommand at every depth (tests/test_cli.py checks the first level)."""
    from retrieval.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                if path != "retrieval" and not (action.help or "").strip():  # a nested group of subcommands
                    missing.append(f"{path} {{{action.dest}}}")
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    if not (helps.get(name) or "").strip():
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                text = (action.help or "").strip()
                if not text or text.lower().startswith("default:"):  # says what it is, not only its default
                    missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "retrieval")
    assert not missing, f"arguments without help: {missing}"


def test_committed_images_are_real_bytes_not_lfs_pointers():
    """.gitattributes routes images to LFS on the Hub; here they must stay plain files, or the demo breaks."""
    images = [p for p in (ROOT / "assets" / "demo").rglob("*") if p.suffix in (".jpg", ".png")]
    assert len(images) >= 70
    pointers = [p.name for p in images if p.read_bytes()[:40].startswith(b"version https://git-lfs")]
    assert not pointers, (f"{len(pointers)} images are Git LFS pointers (committed with git-lfs installed?); "
                          "commit the image bytes, see README 'Binary files'")


def _copy_source(dest: Path) -> Path:
    """What a build needs, copied: building in place would leave build/ and *.egg-info in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "retrieval", dest / "retrieval", ignore=ignore)
    shutil.copytree(ROOT / "assets" / "demo", dest / "assets" / "demo", ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A virtualenv with the package installed from a copy of the checkout: (bin folder, env, work folder)."""
    base = tmp_path_factory.mktemp("pkg")
    src = _copy_source(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", str(src)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    home, work = base / "home", base / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RETRIEVAL_CACHE_DIR", "KERAS_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), RETRIEVAL_DATA_DIR=str(base / "data"), TF_CPP_MIN_LOG_LEVEL="2")
    return venv / "bin", env, work


def _run(installed, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    bin_dir, env, work = installed
    proc = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_installed_package_is_the_one_that_runs(installed):
    bin_dir = installed[0]
    out = _run(installed, "python", "-c", "import retrieval, retrieval.runtime.reference as r; "
               "print(retrieval.__file__); print(r.PHOTOS); print(len(r.photos(32)[1]))").stdout.split("\n")
    venv = bin_dir.parent
    assert Path(out[0]).is_relative_to(venv) and not Path(out[0]).is_relative_to(ROOT)
    # The runtime's reference photos (the demo gallery) travel inside the package.
    assert Path(out[1]) == Path(out[0]).parent / "_demo" and int(out[2]) == 70
    licences = list(venv.glob("lib/python*/site-packages/retrieval_studio-*.dist-info/LICENSE*"))
    assert licences and "Apache License" in licences[0].read_text()


def test_console_command_help_and_version(installed):
    from retrieval import __version__

    assert "usage: retrieval" in _run(installed, "retrieval", "--help").stdout
    assert _run(installed, "retrieval", "--version").stdout.strip() == f"retrieval {__version__}"
    assert "--db" in _run(installed, "retrieval", "index", "--help").stdout


def test_console_command_indexes_and_searches(installed):
    """A real command from outside the checkout: two demo photos into a fresh database, then a search."""
    bin_dir, env, work = installed
    demo = ROOT / "assets" / "demo"
    db = work / "pkg.sqlite"
    out = _run(installed, "retrieval", "index", str(demo / "cat" / "chelsea.jpg"), str(demo / "coffee" / "coffee.jpg"),
               "--db", str(db), "--json").stdout
    assert json.loads(out)["computed"] == 2
    hits = json.loads(_run(installed, "retrieval", "search", str(demo / "cat" / "chelsea.jpg"), "--db", str(db),
                           "-k", "2", "--json").stdout)["results"]
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["name"] == "chelsea.jpg"
    # The runtime was checked against Keras on the packaged reference photos, not skipped for want of them
    # (the CLI's cache is the XDG cache in HOME, as documented).
    trials = list((Path(env["HOME"]) / ".cache" / "retrieval-studio" / "runtimes").glob("*/openvino-f32@*.json"))
    if trials:  # absent only where OpenVINO cannot run at all
        trial = json.loads(trials[0].read_text())
        assert "reference photos" not in (trial["problem"] or "")
        assert trial.get("parity") is None or trial["parity"]["images"] == 70
