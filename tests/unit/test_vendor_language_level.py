"""The vendor-side modules a device worker may import under the device's own, older Python
(JetPack 4.6 ships 3.6; OpenVINO 2022.3 needs <= 3.10; Coral images 3.7-3.9) stay at the Python
3.6 language level, checked by vermin (a real tool, not a list of rules)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY36_MODULES = ["tenantd/runtimes/tflitefile.py", "tenantd/runtimes/edgetpu_compiler.py"]


def vermin() -> str:
    found = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(found).is_file():
        pytest.skip("vermin is not installed (pip install vermin)")
    return found


def test_vendor_modules_run_on_python_36() -> None:
    proc = subprocess.run(
        [vermin(), "--target=3.6-", "--no-tips", "--violations", *PY36_MODULES],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vermin_would_catch_a_newer_construct(tmp_path: Path) -> None:
    newer = tmp_path / "walrus.py"
    newer.write_text("if (n := 3) > 2:\n    print(n)\n")
    proc = subprocess.run(
        [vermin(), "--target=3.6-", "--no-tips", "--violations", str(newer)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
