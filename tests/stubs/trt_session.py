"""Loads and runs models through tenantd's TensorRT runtime with whatever ``tensorrt`` and
``pycuda`` are on the path (the stubs, in the conformance tests); prints one JSON line."""

from __future__ import annotations

import json
import sys

import numpy as np
from pycuda import driver as cuda

from models import tiny_onnx
from tenantd.runtimes.tensorrt import TensorRTRuntime


def main() -> int:
    runtime = TensorRTRuntime(device="cuda:0")
    onnx = tiny_onnx.cnn(image=32, channels=(8, 16, 32), classes=10, seed=7)
    model = runtime.load(onnx)  # built on the device from ONNX
    image = np.ones((1, 32, 32, 3), np.uint8)
    out = model.infer([image.astype(model.inputs[0].dtype)])
    engine = runtime._build_from_onnx(onnx)
    again = runtime.load(engine)  # a serialized engine, deserialized
    report = {
        "inputs": [s.to_wire() for s in model.inputs],
        "out": out[0].ravel().tolist(),
        "device_bytes": model.device_bytes,
        "facts": model.facts,
        "engine_len": len(engine),
        "allocated": cuda.ALLOCATED[0],
        "same_specs": again.inputs == model.inputs,
    }
    model.unload()
    again.unload()
    report["allocated_after_unload"] = cuda.ALLOCATED[0]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
