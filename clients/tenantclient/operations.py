"""The client's operations, each written once: how a method's parameters become a request, and how
the reply becomes the method's return value.

Each function here builds a :class:`Call` for one method of both clients; a client's method is one
line, ``return self._run(operations.NAME(...))`` (awaited in the asyncio client), so the only code
the two clients do not share is ``call``, their I/O. A :class:`Call` is typed by what its reply
parses to, so mypy sees each public method's exact return type.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import numpy as np

from tenantwire import irbundle
from tenantwire.protocol import Op, Reply
from tenantwire.tensors import TensorSpec

T = TypeVar("T")

Inputs = np.ndarray | Mapping[str, np.ndarray]
DEFAULT_TIMEOUT_S = 30.0
# Submitting a model includes the daemon's probe (a process start, a load and a first inference).
DEFAULT_SUBMIT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ModelInfo:
    """What the daemon knows about one model."""

    name: str
    owner: str
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    footprint_bytes: int
    state: str
    resident: bool
    size_bytes: int
    sha256: str
    load_ms: float
    first_infer_ms: float
    max_batch: int = 1  # requests one call of it can carry (dynamic batching); 1 from older daemons

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ModelInfo:
        return cls(
            name=data["name"],
            owner=data["owner"],
            runtime=data["runtime"],
            inputs=tuple(TensorSpec.from_wire(s) for s in data["inputs"]),
            outputs=tuple(TensorSpec.from_wire(s) for s in data["outputs"]),
            footprint_bytes=int(data["footprint_bytes"]),
            state=data["state"],
            resident=bool(data.get("resident", False)),
            size_bytes=int(data["size_bytes"]),
            sha256=data["sha256"],
            load_ms=float(data["load_ms"]),
            first_infer_ms=float(data["first_infer_ms"]),
            max_batch=int(data.get("max_batch", 1)),
        )


@dataclass
class InferResult:
    """Outputs by name (read-only arrays over the received frames) and the daemon's timings:
    ``queue_ms``, ``compute_ms``, ``total_ms``, ``switch`` (the slot last ran another model),
    ``switched_from`` (that model, on a switch) and ``slot``."""

    outputs: dict[str, np.ndarray]
    timings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request, ready for a client's ``call``, and how its reply becomes the method's result.
    ``timeout`` None means the client's own."""

    op: Op
    parse: Callable[[Reply], T]
    args: Mapping[str, Any] | None = None
    tensors: list[tuple[str | None, np.ndarray]] | None = None
    blobs: list[Any] | None = None
    deadline_ms: float | None = None
    timeout: float | None = None


# ------------------------------------------------------------------------- replies


def _result(reply: Reply) -> dict[str, Any]:
    return reply.result


def _nothing(reply: Reply) -> None:
    return None


def _model(reply: Reply) -> ModelInfo:
    return ModelInfo.from_wire(reply.result["model"])


def _models(reply: Reply) -> list[ModelInfo]:
    return [ModelInfo.from_wire(m) for m in reply.result["models"]]


def _pipeline(reply: Reply) -> dict[str, Any]:
    return cast(dict[str, Any], reply.result["pipeline"])


def _pipelines(reply: Reply) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], reply.result["pipelines"])


def _text(reply: Reply) -> str:
    return str(reply.result["text"])


def _identities(reply: Reply) -> list[str]:
    return list(reply.result["identities"])


def _events(reply: Reply) -> list[dict[str, Any]]:
    return list(reply.result["events"])


def _outputs(reply: Reply) -> dict[str, np.ndarray]:
    """Outputs by name; an unnamed output by its index."""
    return {
        out_name if out_name is not None else str(index): array for index, (out_name, array) in enumerate(reply.tensors)
    }


def _infer_result(reply: Reply) -> InferResult:
    return InferResult(outputs=_outputs(reply), timings=reply.timings)


# ---------------------------------------------------------------------- operations


def ping() -> Call[dict[str, Any]]:
    return Call(Op.PING, _result)


def status() -> Call[dict[str, Any]]:
    return Call(Op.STATUS, _result)


def submit_model(
    model: str | os.PathLike[str] | bytes,
    name: str,
    runtime: str | None,
    replace: bool,
    timeout: float,
    compiler_log: str | None = None,
) -> Call[ModelInfo]:
    if isinstance(model, bytes):
        data, filename = model, None
    else:
        path = Path(model)
        if path.suffix.lower() == ".xml":
            # OpenVINO IR is two files; it travels as one bundle (docs/protocol.md, submit_model).
            data, filename = irbundle.pack_files(path), path.with_suffix(irbundle.SUFFIX).name
        else:
            data, filename = path.read_bytes(), path.name
    args: dict[str, Any] = {"name": name, "replace": replace}
    if filename:
        args["filename"] = filename
    if runtime:
        args["runtime"] = runtime
    if compiler_log:
        args["compiler_log"] = compiler_log
    return Call(Op.SUBMIT_MODEL, _model, args, blobs=[data], timeout=timeout)


def list_models() -> Call[list[ModelInfo]]:
    return Call(Op.LIST_MODELS, _models)


def remove_model(name: str) -> Call[None]:
    return Call(Op.REMOVE_MODEL, _nothing, {"model": name})


def set_pipeline(name: str, spec: Mapping[str, Any], replace: bool) -> Call[dict[str, Any]]:
    return Call(Op.PIPELINE_SET, _pipeline, {"name": name, "spec": dict(spec), "replace": replace})


def remove_pipeline(name: str) -> Call[None]:
    return Call(Op.PIPELINE_REMOVE, _nothing, {"name": name})


def list_pipelines() -> Call[list[dict[str, Any]]]:
    return Call(Op.LIST_PIPELINES, _pipelines)


def policy_show() -> Call[dict[str, Any]]:
    return Call(Op.POLICY_SHOW, _result)


def policy_set(toml_text: str) -> Call[dict[str, Any]]:
    return Call(Op.POLICY_SET, _result, {"toml": toml_text})


def metrics() -> Call[str]:
    return Call(Op.METRICS, _text)


def reload_keys() -> Call[list[str]]:
    return Call(Op.RELOAD_KEYS, _identities)


def events(limit: int, event: str | None) -> Call[list[dict[str, Any]]]:
    return Call(Op.EVENTS, _events, {"limit": limit, **({"event": event} if event else {})})


def _as_tensors(inputs: Inputs) -> list[tuple[str | None, np.ndarray]]:
    if isinstance(inputs, np.ndarray):
        return [(None, inputs)]
    if isinstance(inputs, Mapping):
        return [(str(name), np.asarray(value)) for name, value in inputs.items()]
    raise TypeError("inputs must be a numpy array (single-input model) or a dict of arrays by input name")


def infer_detailed(name: str, inputs: Inputs, deadline_ms: float | None, timeout: float | None) -> Call[InferResult]:
    tensors = _as_tensors(inputs)
    return Call(Op.INFER, _infer_result, {"model": name}, tensors=tensors, deadline_ms=deadline_ms, timeout=timeout)


def infer(name: str, inputs: Inputs, deadline_ms: float | None, timeout: float | None) -> Call[dict[str, np.ndarray]]:
    tensors = _as_tensors(inputs)
    return Call(Op.INFER, _outputs, {"model": name}, tensors=tensors, deadline_ms=deadline_ms, timeout=timeout)
