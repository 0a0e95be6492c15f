"""A process that opens an EdgeTPU through tenantd's runtime (with whatever vendor modules are on
its path) and runs models; prints one JSON line per step. Used by the stub conformance tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tenantd.errors import DeviceLost, RuntimeFailure
from tenantd.runtimes.edgetpu import EdgeTPURuntime, loader


def main() -> int:
    device, wait, *paths = sys.argv[1:]
    runtime = EdgeTPURuntime(device=device)
    try:
        models = [runtime.load(Path(p)) for p in paths]
    except DeviceLost as exc:
        print(json.dumps({"step": "load", "error": "DeviceLost", "reason": str(exc)}), flush=True)
        return 3
    static = EdgeTPURuntime(device="cpu").load(Path(paths[0])).facts.get("trial_load")
    param_bytes = EdgeTPURuntime.param_bytes(Path(paths[0]))
    print(json.dumps({"step": "load", "loader": loader(), "param_bytes": param_bytes, "static": static}), flush=True)
    if wait == "wait":  # hold the device until told to go (stdin closes)
        sys.stdin.read()
    for model in models + models[:1]:
        x = np.arange(4, dtype=np.uint8).reshape(1, 4)
        try:
            out = model.infer([x])
        except RuntimeFailure as exc:
            print(json.dumps({"step": "infer", "error": type(exc).__name__, "reason": str(exc)}), flush=True)
            return 4
        print(json.dumps({"step": "infer", "out": out[0].tolist(), "facts": model.facts}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
