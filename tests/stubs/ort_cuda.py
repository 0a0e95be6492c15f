"""A stand-in for ``onnxruntime-gpu`` on a host whose CUDA provider cannot start, or can: it
wraps the installed (CPU) ONNX Runtime and adds what the GPU build does (tests only).

- ``get_available_providers()`` lists ``CUDAExecutionProvider`` (the GPU build always does).
- ``mode = "fallback"``: a session asked for CUDA that cannot start it falls back to the CPU
  with a warning (onnxruntime_inference_collection.py: "EP Error ... when using
  ['CUDAExecutionProvider', 'CPUExecutionProvider'] Falling back to ['CPUExecutionProvider'] and
  retrying."); ``get_providers()`` then says ``['CPUExecutionProvider']``.
- ``mode = "cuda"``: the session reports both providers.
- With ``session.disable_cpu_ep_fallback`` set, a model with nodes ONNX Runtime keeps on the
  CPU (shape subgraphs: Shape, Gather of a shape, Reshape targets) is refused with the message of
  inference_session.cc: "This session contains graph nodes that are assigned to the default CPU
  EP, but fallback to CPU EP has been explicitly disabled by the user."
"""

from __future__ import annotations

import sys
from typing import Any

import onnxruntime as _real

SessionOptions = _real.SessionOptions
__version__ = _real.__version__
mode = "fallback"
FALLBACK_WARNING = (
    "EP Error {} when using ['CUDAExecutionProvider', 'CPUExecutionProvider']\n"
    "Falling back to ['CPUExecutionProvider'] and retrying."
)
CPU_FALLBACK_DISABLED = (
    "This session contains graph nodes that are assigned to the default CPU EP, but fallback to CPU EP has "
    "been explicitly disabled by the user."
)


def _has_shape_nodes(model: Any) -> bool:
    """Whether the model computes shapes (ONNX Runtime places those nodes on the CPU EP)."""
    import onnx

    graph = (onnx.load(model) if isinstance(model, str) else onnx.load_from_string(bytes(model))).graph
    return any(node.op_type in ("Shape", "Size") for node in graph.node)


def get_available_providers() -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class InferenceSession:
    def __init__(self, model: Any, sess_options: Any = None, providers: Any = None) -> None:
        wants_cuda = any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers or [])
        options = sess_options or SessionOptions()
        try:
            disabled = options.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
        except Exception:  # noqa: BLE001 - ONNX Runtime raises when the key was never set
            disabled = False
        if wants_cuda and disabled and _has_shape_nodes(model):
            raise _real.capi.onnxruntime_pybind11_state.Fail(CPU_FALLBACK_DISABLED)
        self._session = _real.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        if wants_cuda and mode == "fallback":
            sys.stderr.write(FALLBACK_WARNING.format("CUDA failure 35: CUDA driver version is insufficient") + "\n")
            self._providers = ["CPUExecutionProvider"]
        elif wants_cuda:
            self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            self._providers = ["CPUExecutionProvider"]

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
