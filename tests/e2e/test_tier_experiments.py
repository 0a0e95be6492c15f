"""End to end: the split and cascade experiments' quick modes, run as a user runs them, across two
real daemons and the relay, on the zoo's trained digits models built into a temporary cache.

Checked: what must hold whatever the machine's speed (the bytes each encoding sends, the cascade's
fraction forwarded rising with the threshold, live pipeline runs agreeing exactly with the outcomes
derived from the same inputs), never the timings.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import REPO, daemon_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in ("torch", "sklearn", "matplotlib", "tqdm", "PIL")),
        reason="needs the zoo's build dependencies and matplotlib (pip install -e '.[test]')",
    ),
]

TIMEOUT_S = 300  # quick runs take well under a minute on 2 cores; this only stops a hung one


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("zoo")
    env = {**daemon_env(), "TENANTD_MODELS_DIR": str(root)}
    built = subprocess.run(
        [sys.executable, "-m", "models", "build", "digits_compact", "digits_full", "--formats", "tflite"],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=REPO,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    yield root


def run(zoo_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**daemon_env(), "TENANTD_MODELS_DIR": str(zoo_dir)}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=REPO
    )


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_quick(zoo_dir: Path, tmp_path: Path) -> None:
    result = run(zoo_dir, "experiments.split", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "digits_full" in result.stdout
    with (tmp_path / "split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_index: dict[int, dict[str, int]] = defaultdict(dict)
    for row in rows:
        by_index[int(row["index"])][row["encoding"]] = int(row["bytes_up"])
    # digits_full has stages conv1, conv2, head: split points 1 and 2, plus the two ends.
    assert set(by_index) == {0, 1, 2, 3}
    assert by_index[3] == {"none": 0}  # the whole model at the edge sends nothing
    for k in (1, 2):
        # The intermediate tensor quantized to 8 bits and compressed is smaller than raw float32.
        assert by_index[k]["int8+zlib"] < by_index[k]["none"]
    # Split 1 hands over 4x4x32 floats (2,048 bytes) plus the message header; the cloud-only
    # baseline sends the 8x8 float input (256 bytes) plus its header.
    assert 2048 < by_index[1]["none"] < 2048 + 400
    assert 256 < by_index[0]["none"] < 256 + 400
    assert all(is_png(p) for p in (tmp_path / "digits_full_bytes.png", tmp_path / "digits_full_latency.png"))
    assert "Best placement per link" in (tmp_path / "report.md").read_text()


def test_cascade_quick(zoo_dir: Path, tmp_path: Path) -> None:
    result = run(zoo_dir, "experiments.cascade", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with (tmp_path / "cascade.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    configs: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        configs[row["config"]].append(row)
    assert len(configs) == 3
    for name, series in configs.items():
        forwarded = [float(r["forwarded"]) for r in sorted(series, key=lambda r: float(r["threshold"]))]
        assert forwarded == sorted(forwarded), name  # a higher threshold never sends fewer up
        assert forwarded[-1] >= 0.9, name  # threshold 1: (almost) everything goes up
        if "general" in name:
            assert forwarded[0] == 0.0, name  # threshold 0: nothing, except...
        else:
            assert 0.0 < forwarded[0] < 0.5, name  # ...the frequent-class model's "other" answers
    with (tmp_path / "cascade_live.csv").open(newline="") as f:
        live = list(csv.DictReader(f))
    assert live
    for row in live:
        # The real pipeline on the same inputs forwards exactly what the per-input outcomes say.
        assert row["forwarded_live"] == row["forwarded_derived"], row
        assert row["accuracy_live"] == row["accuracy_derived"], row
    assert all(is_png(tmp_path / f"cascade_{kind}.png") for kind in ("accuracy", "latency"))
    assert os.path.getsize(tmp_path / "report.md") > 0
