"""Stub of Coral's ``pycoral.utils.edgetpu`` (google-coral/pycoral, pycoral/utils/edgetpu.py):
``list_edge_tpus()`` returns ``[{'type': 'usb', 'path': ...}]``; ``make_interpreter(model_path_or_
content, device=None, delegate=None)`` loads the libedgetpu delegate for ``device`` and returns a
``tflite_runtime`` interpreter with it, as the real one does."""

import os

import tflite_runtime.interpreter as tflite

EDGETPU_SHARED_LIB = "libedgetpu.so.1"


def list_edge_tpus():
    found = []
    for i, device in enumerate(filter(None, os.environ.get("STUB_EDGETPU_DEVICES", "usb:0").split(","))):
        kind = device.split(":")[0]
        path = f"/sys/bus/usb/devices/2-{i + 1}" if kind == "usb" else f"/dev/apex_{i}"
        found.append({"type": kind, "path": path})
    return found


def load_edgetpu_delegate(options=None):
    return tflite.load_delegate(EDGETPU_SHARED_LIB, options or {})


def make_interpreter(model_path_or_content, device=None, delegate=None):
    if delegate is None:
        delegate = load_edgetpu_delegate({"device": device} if device else {})
    if isinstance(model_path_or_content, bytes):
        return tflite.Interpreter(model_content=model_path_or_content, experimental_delegates=[delegate])
    return tflite.Interpreter(model_path=model_path_or_content, experimental_delegates=[delegate])
