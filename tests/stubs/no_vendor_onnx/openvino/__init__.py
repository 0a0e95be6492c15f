"""Hides the installed OpenVINO, as on an NCS2 host whose daemon Python (3.11) cannot have 2022.3."""

raise ImportError("openvino is hidden by tests/stubs/no_vendor_onnx (the daemon's Python lacks it)")
