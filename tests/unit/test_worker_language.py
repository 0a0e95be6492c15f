"""The device worker's language level: it may run under a device's own Python (JetPack 4.6 ships
3.6), so every file it imports must be valid Python 3.6. Checked with vermin over exactly the files
a worker process imports: first its own (tenantd.workermain and what it imports), then, with a
runtime adapter imported as a worker imports one on ``load``, that adapter's first-party files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, daemon_env

VERMIN = Path(sys.executable).with_name("vermin")
ADAPTERS = ("tenantd.runtimes.litert", "tenantd.runtimes.ort", "tenantd.runtimes.openvino")


def imported_files(*modules: str) -> list[str]:
    """The first-party files a fresh interpreter has imported after importing ``modules``, the
    worker's own entry point first (as ``python -m tenantd.workermain`` does)."""
    code = (
        "import importlib, json, sys\n"
        "import tenantd.workermain\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "files = sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})\n"
        f"print(json.dumps([f for f in files if f.startswith({str(REPO)!r})]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=daemon_env(), capture_output=True, text=True, check=True, cwd=REPO
    )
    # The repository's own files: not its tests, nor a virtualenv inside it (.venv, as make creates).
    return [f for f in json.loads(out.stdout) if "/tests/" not in f and "site-packages" not in f]


def vermin(files: list[str]) -> subprocess.CompletedProcess[str]:
    if not VERMIN.exists():
        pytest.skip("vermin is not installed (pip install 'tenantd[test]')")
    return subprocess.run(
        [str(VERMIN), "--target=3.6-", "--no-tips", "--violations", "--eval-annotations", *files],
        capture_output=True,
        text=True,
    )


def test_the_worker_itself_is_python_3_6() -> None:
    files = imported_files()
    names = {Path(f).relative_to(REPO).as_posix() for f in files}
    # What a worker imports before any runtime: nothing of the daemon beyond these three.
    assert names == {"tenantd/__init__.py", "tenantd/workermain.py", "tenantd/workerwire.py"}
    result = vermin(files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vermin_catches_a_3_7_construct(tmp_path: Path) -> None:
    """The check can fail: the same command on a file using a 3.7 feature is refused."""
    late = tmp_path / "late.py"
    late.write_text("from __future__ import annotations\nimport dataclasses\n")
    assert vermin([str(late)]).returncode != 0


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the runtime adapters (tenantd/runtimes/*.py and what they import: base, errors, modelfile, "
    "tenantwire.tensors) are written at 3.10/3.11 level; a worker_python older than the daemon's needs "
    "them at 3.6 level (issue 11 part 2 / a follow-up); until then worker_python must be >= 3.11",
)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_runtime_adapters_a_worker_imports_are_python_3_6(adapter: str) -> None:
    pytest.importorskip(adapter)
    result = vermin(imported_files(adapter))
    assert result.returncode == 0, result.stdout
