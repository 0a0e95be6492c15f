"""Fixtures shared by every test tier: real model files built in set-up, and running daemons."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models import tiny
from tenantd import runtimes
from tenantd.config import Policy
from tenantd.daemon import Daemon
from tests.support.daemon import FAULTY, daemon_in_thread

# The faulty test runtime, in this process (in-thread daemons) and in probe subprocesses.
os.environ["TENANTD_RUNTIMES"] = FAULTY
runtimes.register("faulty", FAULTY.split("=", 1)[1])


@dataclass(frozen=True)
class ModelFiles:
    mlp: Path  # float32 [1, 32] -> "probs" [1, 10]
    mlp_b: Path  # another MLP: float32 [1, 16] -> "probs" [1, 4]
    two_input: Path  # "a", "b" float32 [1, 8] -> "sum", "scaled"
    wakeword: Path  # a real trained int8 keyword-spotting model shipped by pymicro-wakeword


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, data in {
        "mlp": tiny.mlp(32, [64], 10, seed=1),
        "mlp_b": tiny.mlp(16, [32], 4, seed=2),
        "two_input": tiny.two_input((1, 8), seed=3),
    }.items():
        paths[name] = root / f"{name}.tflite"
        paths[name].write_bytes(data)
    wakeword = pytest.importorskip("pymicro_wakeword")
    paths["wakeword"] = Path(wakeword.__file__).parent / "models" / "okay_nabu.tflite"
    assert paths["wakeword"].is_file()
    return ModelFiles(**paths)


def direct_litert(path: Path, inputs: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    """The reference: the same file run in-process by LiteRT, fresh interpreter, one thread."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    if isinstance(inputs, np.ndarray):
        inputs = {details[0]["name"]: inputs}
    for detail in details:
        interpreter.set_tensor(detail["index"], inputs[detail["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/tenantd.sock"


@pytest.fixture
def daemon(tmp_path: Path, endpoint: str) -> Iterator[Daemon]:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy()) as d:
        yield d
