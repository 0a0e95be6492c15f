"""Stub of tflite-runtime 2.14 with libedgetpu's documented device behaviour (tests only)."""

__version__ = "2.14.0+tenantd.stub"
