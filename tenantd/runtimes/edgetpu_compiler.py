"""What ``edgetpu_compiler`` says about a model's parameters, read from its standard output.

The compiler prints one block per input model (several when models are co-compiled to share the
parameter cache: ``edgetpu_compiler a.tflite b.tflite``); the figures are on stdout only, not in
the ``*_edgetpu.log`` operation log, and tenantd stores blobs by hash, so no file beside the model
carries them. A tenant hands that stdout in with the submission (``tenantctl submit
--compiler-log FILE``); otherwise the on-chip figure is an estimate from the file, labelled as
one. (Running ``edgetpu_compiler`` in the daemon would not help: it refuses an already compiled
model, and compiling a submitted plain model would serve a different file than the one probed.)
Edge TPU Compiler 16.0 prints, per model::

    Input model: 1.tflite
    Input size: 5.11MiB
    Output model: 1_edgetpu.tflite
    Output size: 5.09MiB
    On-chip memory used for caching model parameters: 18.00KiB
    On-chip memory remaining for caching model parameters: 6.86MiB
    Off-chip memory used for streaming uncached model parameters: 0.00B

Written at the Python 3.6 language level, for a device worker under an older Python.
"""

import os
import re
from typing import Any, Dict, List, Optional  # noqa: F401 - type comments at the Python 3.6 level

ON_CHIP = "On-chip memory used for caching model parameters"
STREAMED = "Off-chip memory used for streaming uncached model parameters"
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z -]*?):\s*(.*?)\s*$", re.MULTILINE)
_SIZE = re.compile(r"^([\d.]+)\s*(B|KiB|MiB|GiB|KB|MB|GB)$")


class CompilerLogError(ValueError):
    """The text is not ``edgetpu_compiler`` output tenantd can read."""


def _bytes(value):
    # type: (str) -> int
    match = _SIZE.match(value)
    if match is None:
        raise CompilerLogError(f"{value!r} is not a size the compiler prints (like 4.21MiB)")
    return round(float(match.group(1)) * _UNITS[match.group(2)])


def parse_compiler_log(text):
    # type: (str) -> List[Dict[str, Any]]
    """Every model's figures, in the order compiled: a list of dicts with ``input_model``,
    ``output_model``, ``on_chip_bytes``, ``streamed_bytes`` (each model's own, never the first
    block's). Raises CompilerLogError when no model block carries the on-chip figure."""
    models = []  # type: List[Dict[str, Any]]
    current = None  # type: Optional[Dict[str, Any]]
    for match in _LINE.finditer(text):
        key, value = match.group(1).strip(), match.group(2)
        if key == "Input model":
            current = {"input_model": os.path.basename(value)}
            models.append(current)
        elif current is None:
            continue
        elif key == "Output model":
            current["output_model"] = os.path.basename(value)
        elif key == ON_CHIP:
            current["on_chip_bytes"] = _bytes(value)
        elif key == STREAMED:
            current["streamed_bytes"] = _bytes(value)
    models = [m for m in models if "on_chip_bytes" in m]
    if not models:
        raise CompilerLogError(
            f"no model block with {ON_CHIP!r}: pass the compiler's standard output, not its *_edgetpu.log"
        )
    return models


def figures_for(text, model_name=None):
    # type: (str, Optional[str]) -> Dict[str, Any]
    """The facts for one model of a (possibly co-compiled) compiler output: ``model_name`` picks
    the block whose input or output model has that file name; a single-model output needs none.
    The group (every model compiled together) is recorded, since they share the cache."""
    models = parse_compiler_log(text)
    if model_name is None:
        if len(models) > 1:
            raise CompilerLogError(
                "the compiler output covers {} co-compiled models ({}): say which one this file is".format(
                    len(models), ", ".join(m["input_model"] for m in models)
                )
            )
        chosen = models[0]
    else:
        base = os.path.basename(model_name)
        matches = [m for m in models if base in (m["input_model"], m.get("output_model"))]
        if not matches:
            raise CompilerLogError(
                "the compiler output names no model {!r} (it names {})".format(
                    base, ", ".join(m["input_model"] for m in models)
                )
            )
        chosen = matches[0]
    facts = {
        "edgetpu_on_chip_param_bytes": chosen["on_chip_bytes"],
        "edgetpu_streamed_param_bytes": chosen.get("streamed_bytes", 0),
        "edgetpu_param_source": "compiler",
    }
    if len(models) > 1:
        facts["edgetpu_cocompiled_group"] = [m["input_model"] for m in models]
    return facts
