"""Stub ``tflite_runtime.interpreter`` with the EdgeTPU delegate's documented behaviour.

- One process per EdgeTPU: Coral documents that a device is opened by one process at a time; a
  second process's delegate creation fails, which tflite_runtime reports as
  ``ValueError: Failed to load delegate from libedgetpu.so.1`` (tensorflow/lite/python/
  interpreter.py, ``load_delegate``; seen in google-coral/edgetpu#359 on PCIe). Here the holder
  is an flock on ``$STUB_EDGETPU_STATE/<device>.lock``, held until the process exits.
- A USB transfer error is a fatal abort inside libedgetpu, not an exception: google-coral/edgetpu
  #237, #645 ("HandleQueuedBulkIn ... USB transfer error 5"), #494, #476 ("F usb_driver.cc ...
  Abort"). With ``STUB_EDGETPU_USB_ERROR_AT=N`` the Nth invoke writes such a line to stderr and
  calls ``os.abort()``.
- Without the delegate, a model with ``edgetpu-custom-op`` fails ``allocate_tensors`` with
  LiteRT's "Encountered unresolved custom op" error.
Outputs: every element is the sum of the first input's elements mod 256 (a fixed function of the
input, so tests can check what came back).
"""

import fcntl
import os
import sys

import numpy as np

from tenantd.runtimes.tflitefile import EDGETPU_OP, ModelInfo

_HELD = {}  # device -> open lock file, kept for the life of the process
_INVOKES = [0]
USB_ABORT_LINE = "F usb_driver.cc:1043] HandleQueuedBulkIn failed: USB transfer error 5 [LibUsbDataInCallback]\n"


class Delegate:
    def __init__(self, device):
        self.device = device


def load_delegate(library, options=None):
    if "edgetpu" not in library:
        raise ValueError(f"Failed to load delegate from {library}\n")
    device = (options or {}).get("device") or "usb:0"
    state = os.environ.get("STUB_EDGETPU_STATE")
    if not state or device in os.environ.get("STUB_EDGETPU_ABSENT", "").split(","):
        raise ValueError(f"Failed to load delegate from {library}\n")
    if device not in _HELD:
        lock = open(os.path.join(state, device.replace(":", "_") + ".lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise ValueError(f"Failed to load delegate from {library}\n") from None
        _HELD[device] = lock
    return Delegate(device)


class Interpreter:
    def __init__(self, model_path=None, model_content=None, experimental_delegates=None, num_threads=None):
        if model_content is None:
            with open(model_path, "rb") as f:
                model_content = f.read()
        self._info = ModelInfo(model_content)
        self._delegates = list(experimental_delegates or [])
        self._tensors = {}
        self._allocated = False

    def _details(self, tensors, base):
        return [
            {
                "name": t.name,
                "index": base + i,
                "shape": np.array(t.shape, np.int32),
                "shape_signature": np.array(t.shape, np.int32),
                "dtype": np.dtype(t.dtype).type,
                "quantization": (0.0, 0),
            }
            for i, t in enumerate(tensors)
        ]

    def get_input_details(self):
        return self._details(self._info.inputs, 0)

    def get_output_details(self):
        return self._details(self._info.outputs, 1000)

    def allocate_tensors(self):
        if EDGETPU_OP in self._info.custom_codes and not self._delegates:
            raise RuntimeError(
                f"Encountered unresolved custom op: {EDGETPU_OP}.\nSee instructions: "
                f"https://www.tensorflow.org/lite/guide/ops_custom Node number 0 ({EDGETPU_OP}) failed to prepare."
            )
        self._allocated = True

    def resize_tensor_input(self, index, shape):
        raise ValueError("the stub EdgeTPU model has fixed shapes")

    def set_tensor(self, index, value):
        self._tensors[index] = np.asarray(value)

    def invoke(self):
        if not self._allocated:
            raise RuntimeError("Invoke called on model that is not ready.")
        _INVOKES[0] += 1
        abort_at = os.environ.get("STUB_EDGETPU_USB_ERROR_AT")
        if self._delegates and abort_at and _INVOKES[0] >= int(abort_at):
            sys.stderr.write(USB_ABORT_LINE)
            sys.stderr.flush()
            os.abort()
        first = self._tensors.get(0)
        total = int(first.astype(np.int64).sum()) % 256 if first is not None else 0
        for i, t in enumerate(self._info.outputs):
            self._tensors[1000 + i] = np.full(t.shape, total, dtype=t.dtype)

    def get_tensor(self, index):
        return self._tensors[index].copy()
