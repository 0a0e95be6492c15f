"""Split processing: where to cut a network between an edge daemon and a cloud daemon (the paper's
second question, first half).

For each zoo image model and each of its split points k, the experiment deploys the head (stages
before k) on the edge daemon and the tail on the cloud daemon as one ``split`` pipeline, and asks
the pipeline to classify a real photograph (scikit-learn's bundled sample image, cropped and
resized to the model's input). It records, per split point and tensor encoding:

* bytes sent up, as the daemons measured them (all frames of the edge-to-cloud request), next to
  what sending the *input* would cost: the camera's raw 8-bit frame and that frame PNG-compressed
  (lossless; what the paper compares against);
* end-to-end latency through the shaping relay for a grid of links (one-way latency x rate),
  measured where a request takes at most ``--measure-cap-s`` on that link, and for every link
  from a model fitted to the unshaped measurements (edge time + cloud time + 2 x latency + bytes x
  8 / rate), with the measured points shown against it so the model can be judged;
* the two ends: the whole model at the edge, and the whole model in the cloud with the input sent
  (measured as the float32 tensor the model takes, and modeled with the PNG upload instead).

It reports, per link, the best placement and how much the best split saves over sending the
PNG. Both daemons run on this one machine: the cloud is not faster than the edge here, so the
compute part of each curve is this CPU's; the report says so. Zoo models are untrained
(published architectures, initialised here): activations of trained networks are sparser, so
lossless compression of intermediate tensors is, if anything, pessimistic here.

``python -m experiments.split --quick`` runs the digits model on two links in well under a
minute (a test runs it); the full run's command and time are in the README.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.harness import (
    OUT_ROOT,
    ExperimentError,
    check_out_dir,
    fmt,
    machine_info,
    markdown_table,
    now_iso,
    plain_table,
    versions,
    write_json,
)
from experiments.relay import Link
from experiments.tiers import Tiers, link_label, parse_links, two_tiers
from tenantwire.tensors import TensorEncoding

DEFAULT_MODELS = ("mobilenet_v2", "ssd_mobilenet_v2")  # inception_v4 too with --models (slow: 171 MB per split)
QUICK_MODELS = ("digits_full",)
DEFAULT_ENCODINGS = ("none", "zlib", "float16+zlib", "int8+zlib")
# (one-way latency ms, rate Mbit/s): a slow cellular uplink to a good Wi-Fi / wired path.
DEFAULT_LINKS = ((40.0, 2.0), (20.0, 10.0), (10.0, 50.0), (5.0, 200.0))
QUICK_LINKS = ((10.0, 5.0),)


@dataclass
class Settings:
    models: tuple[str, ...] = DEFAULT_MODELS
    fmt: str = "tflite"
    encodings: tuple[str, ...] = DEFAULT_ENCODINGS
    links: tuple[tuple[float, float], ...] = DEFAULT_LINKS
    requests: int = 8
    link_requests: int = 3
    measure_cap_s: float = 1.5
    cloud_speedups: tuple[float, ...] = (1.0, 10.0)
    seed: int = 0
    out: Path = OUT_ROOT / "split"
    quick: bool = False
    resume: bool = False


@dataclass
class Placement:
    """One way to run a model: split at ``index`` (0 = all in the cloud, S = all at the edge)."""

    model: str
    index: int
    label: str
    encoding: str
    bytes_up: float
    bytes_down: float
    edge_ms: float
    cloud_ms: float
    overhead_ms: float  # the unshaped link's round trip beyond both daemons' own times
    intermediate_shape: list[int] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)  # link label -> median total ms

    def predict_ms(self, latency_ms: float, rate_mbps: float, cloud_speedup: float = 1.0) -> float:
        """Modeled end-to-end time; ``cloud_speedup`` > 1 models a cloud that computes that many
        times faster than this CPU (a GPU server), which no measurement here can show."""
        if self.bytes_up == 0 and self.bytes_down == 0:
            return self.edge_ms  # nothing crosses the link
        wire_ms = 8 * (self.bytes_up + self.bytes_down) / (rate_mbps * 1e6) * 1e3
        return self.edge_ms + self.cloud_ms / cloud_speedup + self.overhead_ms + 2 * latency_ms + wire_ms


# ----------------------------------------------------------------------------------------- inputs


def photo(height: int, width: int) -> np.ndarray:
    """A real photograph as an 8-bit HxWx3 frame: scikit-learn's bundled ``china.jpg``, centre-
    cropped to the aspect ratio and resized (a camera frame, before any model preprocessing)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg"))
    w, h = image.size
    scale = min(w / width, h / height)
    cw, ch = int(width * scale), int(height * scale)
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)


def png_bytes(frame: np.ndarray) -> tuple[int, float]:
    """Size of ``frame`` as a PNG (lossless, zlib level 6) and the time encoding it took."""
    from PIL import Image

    start = time.perf_counter()
    buffer = io.BytesIO()
    Image.fromarray(frame.squeeze()).save(buffer, format="PNG", compress_level=6)
    return buffer.tell(), (time.perf_counter() - start) * 1e3


def model_input(frame: np.ndarray, spec_range: tuple[float, float], shape: Sequence[int]) -> np.ndarray:
    """The frame as the model takes it: float32, scaled into the model's input range, shaped as
    the built file's input (NHWC for .tflite)."""
    lo, hi = spec_range
    x = lo + (hi - lo) * (frame.astype(np.float32) / 255.0)
    return x.reshape(shape).astype(np.float32)


def digits_frame() -> np.ndarray:
    from models.zoo import digits

    data = digits.load()
    return (data.x_test[0, 0] * 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------ measuring


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def measure_pipeline(tiers: Tiers, name: str, x: np.ndarray, n: int) -> dict[str, float]:
    """``n`` requests through a pipeline (after one warm-up): medians of its stage timings."""
    tiers.edge.infer_detailed(name, x)
    rows = [tiers.edge.infer_detailed(name, x).timings for _ in range(n)]
    return {
        "bytes_up": _median([r["bytes_up"] for r in rows]),
        "bytes_down": _median([r["bytes_down"] for r in rows]),
        "edge_ms": _median([r["edge_ms"] for r in rows]),
        "cloud_ms": _median([r["cloud_round_trip_ms"] - r["network_ms"] for r in rows]),
        "network_ms": _median([r["network_ms"] for r in rows]),
        "total_ms": _median([r["total_ms"] for r in rows]),
    }


def measure_direct(client: Any, model: str, x: np.ndarray, n: int) -> tuple[float, float]:
    """Median (client-side total ms, daemon-side total ms) of ``n`` plain infers."""
    client.infer_detailed(model, x)
    totals, daemon = [], []
    for _ in range(n):
        start = time.perf_counter()
        result = client.infer_detailed(model, x)
        totals.append((time.perf_counter() - start) * 1e3)
        daemon.append(float(result.timings["total_ms"]))
    return _median(totals), _median(daemon)


def measure_cloud_only(tiers: Tiers, model: str, x: np.ndarray, encoding: str, n: int) -> tuple[float, float, float]:
    """The input sent to the cloud daemon through the relay: (client total ms, bytes up, bytes down)."""

    enc = TensorEncoding.parse(encoding)
    tiers.cloud_relayed.call("infer", {"model": model}, tensors=[(None, x)], encoding=enc)
    totals, up, down = [], [], []
    for _ in range(n):
        start = time.perf_counter()
        reply = tiers.cloud_relayed.call("infer", {"model": model}, tensors=[(None, x)], encoding=enc)
        totals.append((time.perf_counter() - start) * 1e3)
        up.append(reply.request_bytes)
        down.append(reply.wire_bytes)
    return _median(totals), _median(up), _median(down)


# ------------------------------------------------------------------------------------- one model


def run_model(tiers: Tiers, name: str, settings: Settings, progress: Any) -> tuple[list[Placement], dict[str, Any]]:
    from models import zoo

    spec = zoo.resolve(name)
    meta = zoo.metadata(name, settings.fmt)
    in_shape = list(meta["inputs"][0]["shape"])
    points = zoo.split_points(name)
    if spec.name.startswith("digits_"):
        frame = digits_frame()
    else:
        _, _, h, w = spec.input_shape
        frame = photo(h, w)
    x = model_input(frame, spec.input_range, in_shape)
    png, png_ms = png_bytes(frame)
    info = {
        "model": name,
        "input_shape": in_shape,
        "input_float32_bytes": int(x.nbytes),
        "frame_raw_bytes": int(frame.nbytes),
        "frame_png_bytes": png,
        "png_encode_ms": round(png_ms, 3),
        "split_points": len(points),
    }
    whole = zoo.path(name, settings.fmt)
    tiers.edge.submit_model(whole, f"{name}-whole", replace=True)
    tiers.cloud.submit_model(whole, f"{name}-whole", replace=True)
    placements: list[Placement] = []

    _, edge_daemon = measure_direct(tiers.edge, f"{name}-whole", x, settings.requests)
    # The daemon's own total, like the edge stage of a split (the tenant's hop to its edge daemon is
    # the same in every placement, so it is left out of all of them).
    placements.append(Placement(name, len(points) + 1, "edge only", "none", 0, 0, edge_daemon, 0.0, 0.0))
    _, cloud_daemon = measure_direct(tiers.cloud, f"{name}-whole", x, settings.requests)
    cloud_only = []
    for encoding in settings.encodings:
        total, up, down = measure_cloud_only(tiers, f"{name}-whole", x, encoding, settings.requests)
        cloud_only.append(
            Placement(name, 0, "cloud only", encoding, up, down, 0.0, cloud_daemon, max(0.0, total - cloud_daemon))
        )

    def cloud_only_on(p: Placement) -> float:
        return measure_cloud_only(tiers, f"{name}-whole", x, p.encoding, settings.link_requests)[0]

    measure_links(tiers, cloud_only, settings, cloud_only_on)
    placements += cloud_only
    progress.update(1)
    tiers.edge.remove_model(f"{name}-whole")
    tiers.cloud.remove_model(f"{name}-whole")

    for point in points:
        k = int(point["index"])
        split = zoo.build_split(name, k, settings.fmt)
        head, tail, pipe = f"{name}-h{k}", f"{name}-t{k}", f"{name}-s{k}"
        tiers.edge.submit_model(split.head, head, replace=True)
        tiers.cloud.submit_model(split.tail, tail, replace=True)
        at_k: list[Placement] = []
        for encoding in settings.encodings:
            tiers.edge.set_pipeline(
                pipe,
                {"kind": "split", "edge_model": head, "uplink": "cloud", "cloud_model": tail, "encoding": encoding},
                replace=True,
            )
            m = measure_pipeline(tiers, pipe, x, settings.requests)
            at_k.append(
                Placement(
                    name,
                    k,
                    f"after {point['after']}",
                    encoding,
                    m["bytes_up"],
                    m["bytes_down"],
                    m["edge_ms"],
                    m["cloud_ms"],
                    m["network_ms"],
                    list(point.get("tflite_shape") or point["shape"]),
                )
            )

        def split_on(p: Placement, pipe: str = pipe, head: str = head, tail: str = tail) -> float:
            spec = {"kind": "split", "edge_model": head, "uplink": "cloud", "cloud_model": tail, "encoding": p.encoding}
            tiers.edge.set_pipeline(pipe, spec, replace=True)
            return measure_pipeline(tiers, pipe, x, settings.link_requests)["total_ms"]

        measure_links(tiers, at_k, settings, split_on)
        placements += at_k
        tiers.edge.remove_pipeline(pipe)
        tiers.edge.remove_model(head)
        tiers.cloud.remove_model(tail)
        progress.update(1)
    return placements, info


def measure_links(
    tiers: Tiers, placements: list[Placement], settings: Settings, measure: Callable[[Placement], float]
) -> None:
    """Through the shaped relay, while these placements are deployed: each one on each link where
    the model of it predicts at most ``measure_cap_s`` per request; then the link is unshaped again."""
    for latency, rate in settings.links:
        chosen = [p for p in placements if p.predict_ms(latency, rate) / 1e3 <= settings.measure_cap_s]
        if not chosen:
            continue
        tiers.set_link(Link(latency_ms=latency, bandwidth_bps=rate * 1e6))
        for p in chosen:
            p.measured[link_label(latency, rate)] = measure(p)
    tiers.set_link(Link())


# ----------------------------------------------------------------------------------------- report


def best_per_link(
    placements: list[Placement], info: dict[str, Any], links: Sequence[tuple[float, float]], speedups: Sequence[float]
) -> list[dict[str, Any]]:
    rows = []
    splits = [p for p in placements if 0 < p.index <= info["split_points"]]
    edge_only = next(p for p in placements if p.label == "edge only").edge_ms
    raw_cloud = next(p for p in placements if p.index == 0 and p.encoding == "none")
    for speedup in speedups:
        for latency, rate in links:

            def ms(p: Placement, latency: float = latency, rate: float = rate, speedup: float = speedup) -> float:
                return p.predict_ms(latency, rate, speedup)

            best = min(placements, key=ms)
            best_split = min(splits, key=ms) if splits else None
            # The whole model in the cloud with the camera frame sent as a PNG (modeled: the PNG's
            # measured size and encode time, the cloud's measured time and messaging).
            png_ms = (
                info["png_encode_ms"]
                + raw_cloud.cloud_ms / speedup
                + raw_cloud.overhead_ms
                + 2 * latency
                + 8 * (info["frame_png_bytes"] + raw_cloud.bytes_down) / (rate * 1e6) * 1e3
            )
            rows.append(
                {
                    "model": info["model"],
                    "cloud_speedup": speedup,
                    "link": link_label(latency, rate),
                    "best": f"{best.label} ({best.encoding})",
                    "best_ms": round(ms(best), 2),
                    "best_split": None
                    if best_split is None
                    else f"k={best_split.index} {best_split.label} ({best_split.encoding})",
                    "best_split_ms": None if best_split is None else round(ms(best_split), 2),
                    "best_split_bytes": None if best_split is None else int(best_split.bytes_up),
                    "png_over_best_split": None
                    if best_split is None
                    else round(info["frame_png_bytes"] / max(1.0, best_split.bytes_up), 2),
                    "edge_only_ms": round(edge_only, 2),
                    "cloud_png_ms": round(png_ms, 2),
                }
            )
    return rows


def write_csv(path: Path, placements: list[Placement], links: Sequence[tuple[float, float]]) -> None:
    labels = [link_label(*link) for link in links]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "model", "index", "placement", "encoding", "intermediate_shape", "bytes_up", "bytes_down",
                "edge_ms", "cloud_ms", "overhead_ms",
                *[f"predicted_ms@{label}" for label in labels],
                *[f"measured_ms@{label}" for label in labels],
            ]
        )  # fmt: skip
        for p in placements:
            writer.writerow(
                [
                    p.model, p.index, p.label, p.encoding, "x".join(map(str, p.intermediate_shape)), int(p.bytes_up),
                    int(p.bytes_down), round(p.edge_ms, 3), round(p.cloud_ms, 3), round(p.overhead_ms, 3),
                    *[round(p.predict_ms(*link), 3) for link in links],
                    *[fmt(p.measured.get(label), "{:.3f}") for label in labels],
                ]
            )  # fmt: skip


def plot(out: Path, name: str, placements: list[Placement], info: dict[str, Any], settings: Settings) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    files = []
    splits = [p for p in placements if 0 < p.index <= info["split_points"]]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for encoding in settings.encodings:
        pts = sorted((p for p in splits if p.encoding == encoding), key=lambda p: p.index)
        ax.plot([p.index for p in pts], [p.bytes_up for p in pts], marker="o", ms=3, label=f"split, {encoding}")
    ax.axhline(info["frame_raw_bytes"], color="grey", ls="--", label="input frame, raw 8-bit")
    ax.axhline(info["frame_png_bytes"], color="black", ls=":", label="input frame, PNG (lossless)")
    ax.set_yscale("log")
    ax.set_xlabel("split point k (stages on the edge)")
    ax.set_ylabel("bytes sent edge -> cloud (measured)")
    ax.set_title(f"{name}: bytes on the uplink per split point")
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(out / f"{name}_bytes.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(settings.links), figsize=(4 * len(settings.links), 4), sharey=True, squeeze=False)
    best_encoding = min(
        settings.encodings, key=lambda e: sum(p.bytes_up for p in splits if p.encoding == e) or math.inf
    )
    for ax, (latency, rate) in zip(axes[0], settings.links, strict=True):
        label = link_label(latency, rate)
        for encoding in dict.fromkeys(("none", best_encoding)):
            pts = sorted(
                (p for p in placements if p.encoding == encoding and p.index <= info["split_points"]),
                key=lambda p: p.index,
            )
            line = ax.plot(
                [p.index for p in pts], [p.predict_ms(latency, rate) for p in pts], label=f"model, {encoding}"
            )
            got = [(p.index, p.measured[label]) for p in pts if label in p.measured]
            if got:
                ax.scatter(
                    *zip(*got, strict=True), color=line[0].get_color(), marker="x", label=f"measured, {encoding}"
                )
        edge = next(p for p in placements if p.label == "edge only").edge_ms
        ax.axhline(edge, color="green", ls="--", label="whole model at the edge")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("split point k (0 = all in the cloud)")
    axes[0][0].set_ylabel("end-to-end latency, ms")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"{name}: latency per split point and link (both tiers on this CPU)")
    fig.tight_layout()
    files.append(out / f"{name}_latency.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def report(
    out: Path, settings: Settings, infos: list[dict[str, Any]], best: list[dict[str, Any]], plots: list[Path]
) -> str:
    lines = [
        "# Split processing across an edge and a cloud daemon",
        "",
        f"Run {now_iso()} on {machine_info()['cpu_model']}; format {settings.fmt}; "
        f"encodings {', '.join(settings.encodings)}; links (one-way latency / rate): "
        f"{', '.join(link_label(*link) for link in settings.links)}.",
        "",
        "Both daemons run on this CPU, so the cloud is no faster than the edge here: the latency curves",
        "show where the *link* makes a split pay, not what a GPU in the cloud would add. Latencies are",
        "modeled from unshaped measurements (edge time + cloud time + 2 x latency + bytes x 8 / rate) and",
        "checked against measurements through the relay where a request takes at most "
        f"{settings.measure_cap_s:g} s (the crosses in the plots). Zoo weights are untrained.",
        "",
        "## Inputs",
        "",
        markdown_table(
            ["model", "input", "float32 bytes", "frame raw bytes", "frame PNG bytes", "split points"],
            [
                [
                    i["model"],
                    "x".join(map(str, i["input_shape"])),
                    i["input_float32_bytes"],
                    i["frame_raw_bytes"],
                    i["frame_png_bytes"],
                    i["split_points"],
                ]
                for i in infos
            ],
        ),
        "",
        "## Best placement per link",
        "",
        "`cloud` is how much faster than this CPU the cloud computes: x1 is what was measured here (both",
        "daemons on this CPU); larger factors scale the cloud's measured compute time down (modeled, for",
        "a GPU server), everything else as measured.",
        "",
        markdown_table(*best_table(best)),
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.split",
        description="Split each zoo image model at every split point between an edge and a cloud daemon; "
        "measure bytes and latency over emulated links.",
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="zoo models (comma-separated)")
    parser.add_argument("--format", dest="fmt", default="tflite", help="zoo format to deploy (default tflite)")
    parser.add_argument("--encodings", default=",".join(DEFAULT_ENCODINGS), help="tensor encodings to compare")
    parser.add_argument(
        "--links",
        default=",".join(f"{a:g}/{b:g}" for a, b in DEFAULT_LINKS),
        help="links as LATENCY_MS/RATE_MBPS, comma-separated (one-way latency; the same both ways)",
    )
    parser.add_argument("--requests", type=int, default=8, help="requests per placement, unshaped (median)")
    parser.add_argument("--link-requests", type=int, default=3, help="requests per placement per shaped link")
    parser.add_argument("--measure-cap-s", type=float, default=1.5, help="measure through the relay only below this")
    parser.add_argument(
        "--cloud-speedups",
        default="1,10",
        help="cloud compute speed-ups to model besides the measured x1 (a GPU server; comma-separated)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default experiments/out/split)")
    parser.add_argument("--quick", action="store_true", help="the digits model, two links, few requests")
    parser.add_argument("--resume", action="store_true", help="accepted for symmetry: a run starts afresh")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    links = parse_links(args.links)
    s = Settings(
        models=tuple(m for m in args.models.split(",") if m),
        fmt=args.fmt,
        encodings=tuple(e for e in args.encodings.split(",") if e),
        links=links,
        requests=args.requests,
        link_requests=args.link_requests,
        measure_cap_s=args.measure_cap_s,
        cloud_speedups=tuple(float(v) for v in args.cloud_speedups.split(",") if v),
        seed=args.seed,
        out=args.out or (OUT_ROOT / ("split-quick" if args.quick else "split")),
        quick=args.quick,
        resume=args.resume,
    )
    if args.quick:
        s.models, s.links, s.requests, s.link_requests, s.encodings = (
            QUICK_MODELS,
            QUICK_LINKS,
            3,
            2,
            ("none", "zlib", "int8+zlib"),
        )
    return s


def run(settings: Settings) -> str:
    from tqdm import tqdm

    from models import zoo

    for encoding in settings.encodings:
        TensorEncoding.parse(encoding)
    for name in settings.models:
        try:
            zoo.path(name, settings.fmt)
        except zoo.ZooError as exc:
            raise ExperimentError(f"{exc} (or run: make models)") from None
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    check_out_dir(settings.out, "split", parameters, resume=False)
    all_placements: list[Placement] = []
    infos: list[dict[str, Any]] = []
    best: list[dict[str, Any]] = []
    plots: list[Path] = []
    total = sum(len(zoo.split_points(name)) + 1 for name in settings.models)
    with (
        two_tiers(settings.out / "work") as tiers,
        tqdm(total=total, desc="placements", unit="point", file=sys.stderr) as bar,
    ):
        for name in settings.models:
            bar.set_postfix_str(name)
            placements, info = run_model(tiers, name, settings, bar)
            all_placements += placements
            infos.append(info)
            best += best_per_link(placements, info, settings.links, settings.cloud_speedups)
            plots += plot(settings.out, name, placements, info, settings)
    write_csv(settings.out / "split.csv", all_placements, settings.links)
    write_json(
        settings.out / "run.json",
        {
            "experiment": "split",
            "parameters": parameters,
            "machine": machine_info(),
            "versions": versions(),
            "inputs": infos,
            "best": best,
            "finished": now_iso(),
        },
    )
    text = report(settings.out, settings, infos, best, plots)
    (settings.out / "report.md").write_text(text)
    return plain_table(*best_table(best))


def best_table(best: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "model", "cloud", "link", "best placement", "ms", "best split", "ms", "split bytes", "PNG / split",
        "edge only ms", "cloud, PNG up ms",
    ]  # fmt: skip
    rows = [
        [
            b["model"], f"x{b['cloud_speedup']:g}" + (" measured" if b["cloud_speedup"] == 1 else " modeled"),
            b["link"], b["best"], fmt(b["best_ms"]), b["best_split"] or "-", fmt(b["best_split_ms"]),
            fmt(b["best_split_bytes"], "{:,}"), fmt(b["png_over_best_split"], "{:.1f}x"), fmt(b["edge_only_ms"]),
            fmt(b["cloud_png_ms"]),
        ]
        for b in best
    ]  # fmt: skip
    return headers, rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        table = run(settings_from(args))
    except ExperimentError as exc:
        print(f"split: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"\nsplit: done in {time.monotonic() - started:.0f} s; report, CSV and plots in {settings_from(args).out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
