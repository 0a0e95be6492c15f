"""The zoo's builder: turns each catalogue entry into files, checks them, and writes their metadata.

This module owns everything that happens at build time and needs the build-only packages (torch,
onnx, openvino, onnxruntime, scikit-learn, tqdm: ``pip install -e '.[zoo]'``). For each model it
instantiates the architecture with its weights (untrained: seeded initialisation with BatchNorm
statistics set on synthetic inputs, so activations have a trained network's scale; trained: the
digits recipe; copied: a file from a wheel), exports each format (``torch.onnx.export`` ->
ONNX; ``openvino.convert_model`` on that ONNX -> IR; ``models.zoo.tflite_export`` -> TFLite
float32 and int8), loads every file in each runtime it targets and compares its outputs with
PyTorch's on inputs it was not calibrated on, and writes the metadata, the measured agreement
included. A build is cached: a file whose metadata says it was built by the current recipe is
kept unless ``force``. :func:`build_split` writes a model's head and tail at a split point.

Metadata fields (``<dir>/<model>/<format>.json``): ``name``, ``task``, ``format``, ``file``,
``files``, ``file_bytes``, ``sha256``, ``inputs`` / ``outputs`` (name, shape, dtype, layout, and
int8 ``scale`` / ``zero_point``), ``params`` (parameter count of the network, BatchNorm included),
``param_bytes`` (bytes of constant data in the file: what an EdgeTPU parameter cache would hold),
``peak_activation_bytes`` (largest sum of live intermediate tensors, in the file's activation
dtype), ``macs`` and ``flops`` (2 x MACs, convolutions and dense layers), ``trained``,
``weights`` (how the weights were made), ``accuracy`` (trained models), ``agreement`` (per
runtime, vs PyTorch float; int8 also vs PyTorch simulating its int8 rounding), ``split_points``,
``source``, ``tools`` (versions), ``recipe``, ``build_seconds``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.zoo.catalog import (
    FORMATS,
    INSTALL_HINT,
    MODELS,
    BuildDependencyMissing,
    ModelSpec,
    UnknownFormat,
    file_path,
    metadata_path,
    model_dir,
    resolve,
)

__all__ = [
    "BuildResult",
    "SplitFiles",
    "build",
    "build_split",
    "calibrated",
    "load_model",
    "representative",
    "simulated_int8",
]

RECIPE = 2  # bump when a change to the builder changes what it writes; cached files are then rebuilt
SEED = 0
CALIBRATION_SAMPLES = 16
CHECK_SAMPLES = 4
ONNX_OPSET = 17
FLOAT_RTOL = 1e-3  # float formats: max |y - y_torch| <= FLOAT_RTOL * max |y_torch| (+1e-6)
_BUILD_PACKAGES = ("torch", "onnx", "openvino", "onnxruntime", "tqdm")
_TOOL_PACKAGES = ("torch", "onnx", "openvino", "onnxruntime", "ai-edge-litert", "numpy", "scikit-learn")
_VIEW_OPS = {"reshape", "view", "flatten", "permute", "contiguous"}


@dataclass(frozen=True)
class BuildResult:
    """One (model, format) the builder produced or found cached."""

    name: str
    fmt: str
    path: Path
    metadata: dict[str, Any]
    cached: bool
    seconds: float


def _require() -> None:
    missing = []
    for pkg in _BUILD_PACKAGES:
        try:
            __import__(pkg)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise BuildDependencyMissing(f"building models needs {', '.join(missing)}; install them with: {INSTALL_HINT}")


def _tools() -> dict[str, str]:
    versions = {"python": platform.python_version(), "models.zoo recipe": str(RECIPE)}
    for pkg in _TOOL_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    return versions


# --- weights and inputs ---


def representative(spec: ModelSpec, count: int, seed: int) -> list[np.ndarray]:
    """Inputs for calibration and checks: real test digits for the digits models, else smooth random
    fields in ``spec.input_range`` (image-like low-frequency content rather than white noise)."""
    if spec.name.startswith("digits_"):
        from models.zoo import digits

        data = digits.load()
        rng = np.random.default_rng(seed)
        pool = data.x_train if seed == SEED else data.x_test  # calibrate on training images, check on test ones
        return [pool[i : i + 1] for i in rng.choice(len(pool), count, replace=False)]
    import torch

    gen = torch.Generator().manual_seed(seed)
    lo, hi = spec.input_range
    n, c, h, w = spec.input_shape
    out = []
    for _ in range(count):
        coarse = torch.rand((n, c, max(h // 16, 2), max(w // 16, 2)), generator=gen)
        field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        field = 0.85 * field + 0.15 * torch.rand((n, c, h, w), generator=gen)
        out.append((lo + (hi - lo) * field).numpy().astype(np.float32))
    return out


def load_model(name: str) -> Any:
    """The PyTorch model (``nn.Sequential`` of stages, eval mode) whose weights every format holds.

    Deterministic: the same weights on every call and every machine with the same torch."""
    import torch

    from models.zoo import digits
    from models.zoo.arch import ARCHITECTURES

    spec = resolve(name)
    if spec.kind == "copied":
        raise UnknownFormat(f"{spec.name} is a copied .tflite file, not a PyTorch model")
    if spec.kind == "trained":
        return digits.train(spec.name)
    torch.manual_seed(SEED)
    model = ARCHITECTURES[spec.name]()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if norms:
        # Fresh BatchNorm layers are identities, and the activations of a default-initialised
        # network then shrink or grow with depth (MobileNetV2's logits come out near 1e-9). Setting
        # the statistics from synthetic inputs gives every layer unit-scale outputs, as in a trained
        # network, so that int8 ranges and numerical agreement mean something.
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        model.train()
        with torch.no_grad():
            batch = np.concatenate(representative(spec, 8, SEED + 7))
            model(torch.from_numpy(batch))
    return model.eval()


# --- analysis ---


def _analyse(gm: Any) -> dict[str, int]:
    """MACs of convolutions and dense layers, and the peak of live intermediate tensors (elements)."""
    import torch
    from torch import nn

    macs = 0
    order = list(gm.graph.nodes)
    position = {node: i for i, node in enumerate(order)}
    last_use = {node: max((position[u] for u in node.users), default=position[node]) for node in order}
    elements: dict[Any, int] = {}
    for node in order:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue
        numel = int(np.prod(meta.shape))
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(mod, nn.Conv2d):
            macs += numel * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            macs += numel * mod.in_features
        is_view = (node.op == "call_method" and node.target in _VIEW_OPS) or node.target is torch.flatten
        is_view = is_view or isinstance(mod, nn.Dropout | nn.Identity | nn.Flatten)
        if not is_view:
            elements[node] = numel
    peak = 0
    for i in range(len(order)):
        live = sum(n for node, n in elements.items() if position[node] <= i <= last_use[node])
        peak = max(peak, live)
    return {"macs": macs, "peak_activation_elements": peak}


def _split_points(model: Any, spec: ModelSpec) -> list[dict[str, Any]]:
    """One entry per boundary between stages: the stage before it and the tensor handed over."""
    import torch

    if not spec.split:
        return []
    x = torch.from_numpy(representative(spec, 1, SEED + 1)[0])
    names = [name for name, _ in model.named_children()]
    points = []
    with torch.no_grad():
        for k, (name, stage) in enumerate(model.named_children(), start=1):
            x = stage(x)
            if k == len(names):
                break
            shape = [int(d) for d in x.shape]
            numel = int(np.prod(shape))
            nhwc = [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 else shape
            points.append(
                {
                    "index": k,
                    "after": name,
                    "before": names[k],
                    "shape": shape,
                    "tflite_shape": nhwc,
                    "bytes_float32": 4 * numel,
                    "bytes_int8": numel,
                }
            )
    return points


def _param_bytes(fmt: str, files: Sequence[Path]) -> int:
    if fmt.startswith("tflite"):
        from tenantd.runtimes.litert import tflite_param_bytes

        return tflite_param_bytes(files[0].read_bytes())
    if fmt == "openvino":
        return files[1].stat().st_size  # the .bin holds the weights and nothing else
    import onnx

    model = onnx.load(str(files[0]))
    return sum(
        int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
    )


def _write_json(dest: Path, data: dict[str, Any]) -> None:
    """Write metadata last and atomically: a reader sees either no metadata or the finished file's."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(dest)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- export ---


def _export_onnx(
    model: Any, spec: ModelSpec, example: np.ndarray, dest: Path, in_name: str, out_names: Sequence[str]
) -> None:
    import torch

    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, but it is the one that
        # writes a single self-contained file (weights inside), which is what `tenantctl submit` takes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(dest),
            input_names=[in_name],
            output_names=list(out_names),
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _export_openvino(onnx_file: Path, dest: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_file)), str(dest), compress_to_fp16=False)


def _export_tflite(
    model: Any,
    spec: ModelSpec,
    example: np.ndarray,
    dest: Path,
    int8: bool,
    in_name: str,
    out_names: Sequence[str],
    calibration: Sequence[np.ndarray] | None = None,
    input_quant: tuple[float, int] | None = None,
    quantized: tuple[Any, Any] | None = None,
) -> None:
    """Write the TFLite file; ``quantized`` is a :func:`calibrated` ``(graph, ranges)`` pair to reuse."""
    import torch

    from models.zoo.tflite_export import export_tflite, prepare

    if int8:
        gm, ranges = quantized or calibrated(model, spec, example, calibration)
    else:
        gm, ranges = prepare(model, torch.from_numpy(example)), None
    kind = "int8" if int8 else "float32"
    data = export_tflite(
        gm,
        input_name=in_name,
        output_names=out_names,
        description=f"tenantd zoo {spec.name} {kind} recipe {RECIPE} ({spec.kind})",
        ranges=ranges,
        input_quant=input_quant,
    )
    dest.write_bytes(data)


def calibrated(
    model: Any, spec: ModelSpec, example: np.ndarray, calibration: Sequence[np.ndarray] | None = None
) -> tuple[Any, Any]:
    """The traced graph of ``model`` and its activation ranges over the representative set (the
    build's own unless ``calibration`` is given)."""
    import torch

    from models.zoo.tflite_export import calibrate, prepare

    gm = prepare(model, torch.from_numpy(example))
    samples = calibration if calibration is not None else representative(spec, CALIBRATION_SAMPLES, SEED)
    return gm, calibrate(gm, [torch.from_numpy(s) for s in samples])


def _files(fmt: str, main: Path) -> list[Path]:
    return [main, main.with_suffix(".bin")] if fmt == "openvino" else [main]


def _io(runner: Any, fmt: str, outputs: bool) -> list[dict[str, Any]]:
    """Input or output specs as the runtime reports them."""
    if fmt.startswith("tflite"):
        details = runner.output_details if outputs else runner.input_details
        specs = []
        for d in details:
            entry: dict[str, Any] = {
                "name": d["name"],
                "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
                "layout": "NHWC" if len(d["shape"]) == 4 else None,
            }
            if np.dtype(d["dtype"]) != np.float32:
                entry["scale"], entry["zero_point"] = float(d["quantization"][0]), int(d["quantization"][1])
            specs.append(entry)
        return specs
    if fmt == "onnx":
        items = runner.session.get_outputs() if outputs else runner.session.get_inputs()
        return [
            {
                "name": i.name,
                "shape": list(i.shape),
                "dtype": "float32",
                "layout": "NCHW" if len(i.shape) == 4 else None,
            }
            for i in items
        ]
    ports = runner.compiled.outputs if outputs else runner.compiled.inputs
    return [
        {
            "name": p.get_any_name(),
            "shape": [int(s) for s in p.get_shape()],
            "dtype": "float32",
            "layout": "NCHW" if len(p.get_shape()) == 4 else None,
        }
        for p in ports
    ]


def _agreement(fmt: str, got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> dict[str, Any]:
    """How far a format's outputs are from PyTorch's on the check inputs.

    Float formats: the largest absolute error relative to the largest reference value, which must
    stay within ``FLOAT_RTOL``. int8: top-1 agreement (per row of the last axis: per image, per
    anchor) and the cosine similarity of the dequantized outputs with PyTorch's."""
    max_err = max(
        float(np.abs(g - w).max()) for gs, ws in zip(got, want, strict=True) for g, w in zip(gs, ws, strict=True)
    )
    scale = max(float(np.abs(w).max()) for ws in want for w in ws)
    result: dict[str, Any] = {"reference": "PyTorch float32", "samples": len(want), "max_abs_error": max_err}
    result["max_rel_error"] = max_err / max(scale, 1e-12)
    if fmt != "tflite_int8":
        result["tolerance_rel"] = FLOAT_RTOL
        result["within_tolerance"] = max_err <= FLOAT_RTOL * scale + 1e-6
        return result
    agree, rows, cosines = 0, 0, []
    for gs, ws in zip(got, want, strict=True):
        for g, w in zip(gs, ws, strict=True):
            g2, w2 = g.reshape(-1, g.shape[-1]), w.reshape(-1, w.shape[-1])
            agree += int((g2.argmax(1) == w2.argmax(1)).sum())
            rows += g2.shape[0]
            denom = float(np.linalg.norm(g) * np.linalg.norm(w)) or 1.0
            cosines.append(float((g.ravel() @ w.ravel()) / denom))
    result["top1_agreement"] = agree / rows
    result["min_cosine"] = min(cosines)
    return result


def _check(
    fmt: str,
    files: Sequence[Path],
    inputs: Sequence[np.ndarray],
    want: list[list[np.ndarray]],
    simulated: list[list[np.ndarray]] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Load the file in every runtime its format targets, run the check inputs, measure agreement
    with PyTorch (and, for int8, with PyTorch simulating the same int8 arithmetic)."""
    from models.zoo.runners import RUNTIMES, load, run_float

    per_runtime: dict[str, Any] = {}
    first = None
    for runtime in RUNTIMES[fmt]:
        runner = load(files[0], runtime)
        first = first or runner
        got = [run_float(runner, [x], tflite=fmt.startswith("tflite")) for x in inputs]
        per_runtime[runtime] = _agreement(fmt, got, want)
        if simulated is not None:
            vs_sim = _agreement(fmt, got, simulated)
            vs_sim["reference"] = "PyTorch simulating the file's int8 rounding (models.zoo.tflite_export.simulate_int8)"
            per_runtime[runtime]["vs_simulated_int8"] = vs_sim
    return per_runtime, first


def simulated_int8(quantized: tuple[Any, Any], inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Outputs of :func:`models.zoo.tflite_export.simulate_int8` for a :func:`calibrated` model."""
    import torch

    from models.zoo.tflite_export import simulate_int8

    run = simulate_int8(*quantized)
    outs = []
    for x in inputs:
        y = run(torch.from_numpy(x))
        outs.append([t.numpy() for t in (y if isinstance(y, tuple) else (y,))])
    return outs


def _reference(model: Any, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    import torch

    outs = []
    with torch.no_grad():
        for x in inputs:
            y = model(torch.from_numpy(x))
            outs.append([t.numpy() for t in (y if isinstance(y, tuple) else (y,))])
    return outs


def _write(
    fmt: str,
    dest: Path,
    model: Any,
    spec: ModelSpec,
    example: np.ndarray,
    in_name: str,
    out_names: Sequence[str],
    **kw: Any,
) -> None:
    """Export ``model`` as ``fmt`` to ``dest`` (the ``.xml`` for OpenVINO)."""
    if fmt == "onnx":
        _export_onnx(model, spec, example, dest, in_name, out_names)
    elif fmt == "openvino":
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = Path(tmp) / "model.onnx"
            _export_onnx(model, spec, example, onnx_file, in_name, out_names)
            _export_openvino(onnx_file, dest)
    else:
        _export_tflite(model, spec, example, dest, fmt == "tflite_int8", in_name, out_names, **kw)


def _cached(spec: ModelSpec, fmt: str, root: Path | None) -> dict[str, Any] | None:
    meta_file = metadata_path(spec.name, fmt, root)
    if not meta_file.exists():
        return None
    meta: dict[str, Any] = json.loads(meta_file.read_text())
    files = [model_dir(spec.name, root) / f for f in meta.get("files", [])]
    ok = meta.get("recipe") == RECIPE and files and all(f.exists() for f in files)
    return meta if ok and sum(f.stat().st_size for f in files) == meta.get("file_bytes") else None


_CONVERTERS = {
    "onnx": f"torch.onnx.export (TorchScript exporter, opset {ONNX_OPSET})",
    "openvino": f"openvino.convert_model on the torch.onnx.export file (opset {ONNX_OPSET}), fp32 weights",
    "tflite": "models.zoo.tflite_export (torch.fx trace, BatchNorm folded, TFLite flatbuffer), float32",
    "tflite_int8": (
        "models.zoo.tflite_export, full-integer int8: per-channel symmetric conv weights, per-tensor "
        f"asymmetric activations calibrated on {CALIBRATION_SAMPLES} representative inputs"
    ),
}


class _Model:
    """A torch model built once per build call and shared by its formats."""

    def __init__(self, spec: ModelSpec) -> None:
        import torch

        from models.zoo.tflite_export import prepare

        self.spec = spec
        self.model = load_model(spec.name)
        self.example = representative(spec, 1, SEED + 1)[0]
        self.params = int(sum(p.numel() for p in self.model.parameters()))
        self.stats = _analyse(prepare(self.model, torch.from_numpy(self.example)))
        self.split_points = _split_points(self.model, spec)
        self.checks = representative(spec, CHECK_SAMPLES, SEED + 2)
        self.want = _reference(self.model, self.checks)
        self.accuracy: dict[str, Any] | None = None
        if spec.kind == "trained":
            from models.zoo import digits

            self.data = digits.load()
            self.accuracy = {"pytorch": digits.accuracy(self.model, self.data.x_test, self.data.y_test)}

    def weights(self) -> str:
        if self.spec.kind == "trained":
            from models.zoo import digits

            return (
                f"trained here: Adam lr {digits.LR}, {digits.EPOCHS} epochs, batch {digits.BATCH}, seed {digits.SEED}, "
                "on a stratified 75% of scikit-learn's load_digits"
            )
        return f"untrained: PyTorch default initialisation, seed {SEED}; BatchNorm statistics from synthetic inputs"


def _file_accuracy(fmt: str, file: Path, m: _Model) -> float:
    from models.zoo.runners import RUNTIMES, load, run_float

    runner = load(file, RUNTIMES[fmt][0], threads=1)
    hits = 0
    for x, y in zip(m.data.x_test, m.data.y_test, strict=True):
        hits += int(run_float(runner, [x[None]], tflite=fmt.startswith("tflite"))[0].argmax() == y)
    return hits / len(m.data.y_test)


def _build_one(m: _Model, fmt: str, root: Path | None) -> BuildResult:
    spec = m.spec
    start = time.monotonic()
    dest = file_path(spec.name, fmt, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    metadata_path(spec.name, fmt, root).unlink(missing_ok=True)  # the file is not built until its metadata is back
    int8 = fmt == "tflite_int8"
    quantized = calibrated(m.model, spec, m.example) if int8 else None  # shared by the file and its check
    _write(fmt, dest, m.model, spec, m.example, spec.input_name, spec.output_names, quantized=quantized)
    files = _files(fmt, dest)
    simulated = simulated_int8(quantized, m.checks) if quantized is not None else None
    agreement, runner = _check(fmt, files, m.checks, m.want, simulated)
    accuracy = None
    if m.accuracy is not None:
        accuracy = {
            "test_set": "scikit-learn load_digits, stratified 25% held out (random_state 0)",
            "test_samples": len(m.data.y_test),
            "top1": _file_accuracy(fmt, dest, m),
            "top1_pytorch": m.accuracy["pytorch"],
        }
    meta: dict[str, Any] = {
        "schema": 1,
        "name": spec.name,
        "task": spec.task,
        "summary": spec.summary,
        "format": fmt,
        "file": dest.name,
        "files": [f.name for f in files],
        "file_bytes": sum(f.stat().st_size for f in files),
        "sha256": _sha256(dest),
        "inputs": _io(runner, fmt, outputs=False),
        "outputs": _io(runner, fmt, outputs=True),
        "params": m.params,
        "param_bytes": _param_bytes(fmt, files),
        "peak_activation_bytes": m.stats["peak_activation_elements"] * (1 if int8 else 4),
        "macs": m.stats["macs"],
        "flops": 2 * m.stats["macs"],
        "trained": spec.kind != "untrained",
        "weights": m.weights(),
        "accuracy": accuracy,
        "agreement": agreement,
        "split_points": m.split_points,
        "source": spec.source,
        "converter": _CONVERTERS[fmt],
        "tools": _tools(),
        "recipe": RECIPE,
        "build_seconds": round(time.monotonic() - start, 2),
    }
    _write_json(metadata_path(spec.name, fmt, root), meta)
    return BuildResult(spec.name, fmt, dest, meta, False, time.monotonic() - start)


def _tflite_counts(data: bytes) -> int:
    """Number of constant elements in a .tflite file (its parameter count)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    seen, count = set(), 0
    for sg in model.subgraphs:
        for t in sg.tensors:
            buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
            if t.buffer and buf is not None and buf.data is not None and t.buffer not in seen:
                seen.add(t.buffer)
                count += int(np.prod(t.shape)) if t.shape is not None else 0
    return count


def _copy_wakeword(spec: ModelSpec, root: Path | None) -> BuildResult:
    """Copy a trained microWakeWord model out of the pymicro-wakeword wheel, with metadata."""
    start = time.monotonic()
    try:
        import pymicro_wakeword
    except ImportError as exc:
        raise BuildDependencyMissing(
            f"{spec.name} is copied from pymicro-wakeword; install it with: {INSTALL_HINT}"
        ) from exc
    from models.zoo.runners import load
    from tenantd.runtimes.litert import tflite_param_bytes

    word = spec.name.removeprefix("wakeword_")
    src_dir = Path(pymicro_wakeword.__file__).parent / "models"
    dest = file_path(spec.name, "tflite_int8", root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    metadata_path(spec.name, "tflite_int8", root).unlink(missing_ok=True)
    shutil.copyfile(src_dir / f"{word}.tflite", dest)
    config_file = src_dir / f"{word}.json"
    runner = load(dest, "litert", threads=1)
    data = dest.read_bytes()
    version = importlib.metadata.version("pymicro-wakeword")
    meta: dict[str, Any] = {
        "schema": 1,
        "name": spec.name,
        "task": spec.task,
        "summary": spec.summary,
        "format": "tflite_int8",
        "file": dest.name,
        "files": [dest.name],
        "file_bytes": len(data),
        "sha256": _sha256(dest),
        "inputs": _io(runner, "tflite_int8", outputs=False),
        "outputs": _io(runner, "tflite_int8", outputs=True),
        "params": _tflite_counts(data),
        "param_bytes": tflite_param_bytes(data),
        "peak_activation_bytes": None,  # not derived for a copied streaming model
        "macs": None,
        "flops": None,
        "trained": True,
        "weights": f"trained by the microWakeWord project; copied unchanged from pymicro-wakeword {version}",
        "accuracy": None,
        "wakeword_config": json.loads(config_file.read_text()) if config_file.exists() else None,
        "agreement": None,
        "split_points": [],
        "source": f"pymicro-wakeword=={version} (pymicro_wakeword/models/{word}.tflite)",
        "converter": "none (copied)",
        "tools": _tools() | {"pymicro-wakeword": version},
        "recipe": RECIPE,
        "build_seconds": round(time.monotonic() - start, 2),
    }
    _write_json(metadata_path(spec.name, "tflite_int8", root), meta)
    return BuildResult(spec.name, "tflite_int8", dest, meta, False, time.monotonic() - start)


def _plan(names: Sequence[str] | None, formats: Sequence[str] | None) -> list[tuple[ModelSpec, list[str]]]:
    specs = [resolve(n) for n in names] if names else list(MODELS.values())
    for fmt in formats or ():
        if fmt not in FORMATS:
            raise UnknownFormat(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return [(s, [f for f in s.formats if not formats or f in formats]) for s in specs]


def build(
    names: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
    *,
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[BuildResult]:
    """Build ``names`` (default: the whole zoo) in ``formats`` (default: each model's formats).

    Files whose metadata says they were built by this recipe are kept unless ``force``. With
    ``progress`` a tqdm bar on stderr shows each step; ``log`` receives one line per file."""
    _require()
    from tqdm import tqdm

    root_path = Path(root) if root is not None else None
    plan = _plan(names, formats)
    results: list[BuildResult] = []
    steps = sum(len(fmts) for _, fmts in plan)
    with tqdm(total=steps, unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:

        def say(line: str) -> None:
            if log is not None:
                with tqdm.external_write_mode(file=sys.stderr):  # keep the bar below the lines
                    log(line)

        for spec, fmts in plan:
            todo = []
            for fmt in fmts:
                meta = None if force else _cached(spec, fmt, root_path)
                if meta is None:
                    todo.append(fmt)
                    continue
                results.append(BuildResult(spec.name, fmt, file_path(spec.name, fmt, root_path), meta, True, 0.0))
                bar.update(1)
                say(f"{spec.name} {fmt}: cached ({meta['file_bytes']:,} bytes)")
            if not todo:
                continue
            if spec.kind == "copied":
                bar.set_description(f"{spec.name} copy")
                result = _copy_wakeword(spec, root_path)
                results.append(result)
                bar.update(1)
                say(f"{spec.name} tflite_int8: copied ({result.metadata['file_bytes']:,} bytes)")
                continue
            bar.set_description(f"{spec.name} weights")
            model = _Model(spec)
            for fmt in todo:
                bar.set_description(f"{spec.name} {fmt}")
                result = _build_one(model, fmt, root_path)
                results.append(result)
                bar.update(1)
                say(_summary(result))
    return results


def _summary(result: BuildResult) -> str:
    meta = result.metadata
    checks = []
    for runtime, agreement in (meta.get("agreement") or {}).items():
        if "top1_agreement" in agreement:
            sim = agreement["vs_simulated_int8"]
            checks.append(
                f"{runtime} vs float: top1 {agreement['top1_agreement']:.3f} cos {agreement['min_cosine']:.4f}, "
                f"vs simulated int8: top1 {sim['top1_agreement']:.3f} cos {sim['min_cosine']:.4f}"
            )
        else:
            checks.append(f"{runtime} rel.err {agreement['max_rel_error']:.1e}")
    acc = f", accuracy {meta['accuracy']['top1']:.4f}" if meta.get("accuracy") else ""
    return (
        f"{result.name} {result.fmt}: {meta['file_bytes']:,} bytes in {result.seconds:.1f} s; {'; '.join(checks)}{acc}"
    )


@dataclass(frozen=True)
class SplitFiles:
    """A model cut at split point ``index``: ``head`` runs stages ``[:index]``, ``tail`` the rest."""

    name: str
    fmt: str
    index: int
    head: Path
    tail: Path
    intermediate: dict[str, Any]


def build_split(name: str, index: int, fmt: str, *, root: str | Path | None = None) -> SplitFiles:
    """Write the head and tail of ``name`` at split point ``index`` (1 .. number of stages - 1) as
    ``fmt`` under ``<dir>/<model>/split/<index>/``, kept like the models until the recipe changes.
    Feeding the head's output to the tail gives the whole model's output: exactly in the float
    formats; in int8 the tail takes the head's int8 output unchanged (its input has the head's
    output scale and zero point)."""
    _require()
    import torch
    from torch import nn

    spec = resolve(name)
    if not spec.split:
        raise UnknownFormat(f"{spec.name} cannot be split")
    if fmt not in spec.formats:
        raise UnknownFormat(f"{spec.name} is built only as {', '.join(spec.formats)}, not {fmt}")
    out_dir = model_dir(spec.name, root) / "split" / str(index)
    suffix = file_path(spec.name, fmt, root).name.removeprefix(spec.name)
    head_file, tail_file = out_dir / f"head{suffix}", out_dir / f"tail{suffix}"
    stamp = out_dir / f"{fmt}.json"
    if stamp.exists() and head_file.exists() and tail_file.exists():
        done = json.loads(stamp.read_text())
        if done.get("recipe") == RECIPE:
            return SplitFiles(spec.name, fmt, index, head_file, tail_file, done["intermediate"])
    model = load_model(spec.name)
    stages = list(model.named_children())
    if not 1 <= index < len(stages):
        raise ValueError(f"{spec.name} has split points 1..{len(stages) - 1}, not {index}")
    head, tail = nn.Sequential(OrderedDict(stages[:index])).eval(), nn.Sequential(OrderedDict(stages[index:])).eval()
    example = representative(spec, 1, SEED + 1)[0]
    with torch.no_grad():
        middle = head(torch.from_numpy(example)).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    _write(fmt, head_file, head, spec, example, spec.input_name, ["intermediate"])
    if fmt == "tflite_int8":
        from models.zoo.runners import load

        calib = representative(spec, CALIBRATION_SAMPLES, SEED)
        with torch.no_grad():
            tail_calib = [head(torch.from_numpy(x)).numpy() for x in calib]
        detail = load(head_file, "litert", threads=1).output_details[0]  # type: ignore[attr-defined]
        quant = (float(detail["quantization"][0]), int(detail["quantization"][1]))
        _write(
            fmt,
            tail_file,
            tail,
            spec,
            middle,
            "intermediate",
            spec.output_names,
            calibration=tail_calib,
            input_quant=quant,
        )
    else:
        _write(fmt, tail_file, tail, spec, middle, "intermediate", spec.output_names)
    point = _split_points(model, spec)[index - 1]
    _write_json(stamp, {"recipe": RECIPE, "format": fmt, "intermediate": point})
    return SplitFiles(spec.name, fmt, index, head_file, tail_file, point)
