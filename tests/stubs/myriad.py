"""A stand-in for OpenVINO 2022.3's ``openvino.runtime.Core`` with one MYRIAD device (an NCS2),
for the conformance tests. OpenVINO 2022.3 has no wheel for Python 3.11, so this wraps the
installed OpenVINO's Core (reading models and compiling them for the CPU, which gives the same
specs and outputs in FP32) and adds what the MYRIAD plugin does:

- ``available_devices`` lists ``MYRIAD`` beside ``CPU`` (2022.3's name for one stick);
- the stick has room for ``capacity`` networks: compiling one more raises the plugin's own error,
  ``RuntimeError("Failed to allocate graph: NC_OUT_OF_MEMORY")`` or, as reported at the 10th
  network in openvinotoolkit/openvino#2418, ``RuntimeError("Can not init Myriad device:
  NC_ERROR")`` (both from 2022.3's myriad_executor.cpp);
- a compiled network freed (``del``) gives its room back.
"""

from __future__ import annotations

import weakref
from typing import Any

from openvino import Core as _RealCore

OUT_OF_MEMORY = "Failed to allocate graph: NC_OUT_OF_MEMORY"
INIT_FAILED = "Can not init Myriad device: NC_ERROR"


class MyriadCore:
    def __init__(self, capacity: int = 2, error: str = OUT_OF_MEMORY, present: bool = True) -> None:
        self._core = _RealCore()
        self.capacity = capacity
        self.error = error
        self.present = present
        self._graphs: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def available_devices(self) -> list[str]:
        return ["CPU", "MYRIAD"] if self.present else ["CPU"]

    def read_model(self, *args: Any, **kwargs: Any) -> Any:
        return self._core.read_model(*args, **kwargs)

    def compile_model(self, model: Any, device: str, config: dict[str, Any] | None = None) -> Any:
        if not device.startswith("MYRIAD"):
            return self._core.compile_model(model, device, config or {})
        if len(self._graphs) >= self.capacity:
            raise RuntimeError(self.error)
        compiled = self._core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._graphs.add(compiled)
        return compiled
