"""Stub pycuda: device memory is a dict of numpy buffers (tests only; see tests/stubs/README.md)."""

VERSION_TEXT = "2022.1+tenantd.stub"
