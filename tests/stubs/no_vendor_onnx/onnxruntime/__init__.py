"""Hides the installed onnxruntime, as on a host whose daemon Python has none (its worker's has)."""

raise ImportError("onnxruntime is hidden by tests/stubs/no_vendor_onnx (the daemon's Python lacks it)")
