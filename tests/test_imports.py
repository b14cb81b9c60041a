"""Import boundaries of the engine: what a module may pull in when it is imported.

Each check runs in a fresh interpreter with the ``retrieval`` package stubbed,
so the package's own ``__init__`` (which loads the whole service) does not hide
what the module under test imports by itself.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = ("import sys, types, pathlib; pkg = types.ModuleType('retrieval'); "
        "pkg.__path__ = [str(pathlib.Path('retrieval').resolve())]; sys.modules['retrieval'] = pkg; ")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", STUB + code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_config_imports_no_model_code():
    """The CLI and the app read the choices before any model is wanted: no backbones, no Keras."""
    loaded = _run("import retrieval.config; "
                  "print(sorted(m for m in sys.modules if m.startswith(('retrieval.backbones', 'keras', 'tensorflow'))))")
    assert loaded == "[]"


def test_trained_models_are_served_without_the_training_code():
    """``backbones.adapted`` defines the trained models; ``adapt`` trains them and imports it, never the reverse."""
    assert _run("import retrieval.backbones.adapted; print('retrieval.adapt' in sys.modules, 'keras' in sys.modules)"
                ).split() == ["False", "False"]
