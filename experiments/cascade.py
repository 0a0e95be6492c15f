"""The compression cascade: a compact classifier at the edge, the full one in the cloud, and only
unsure inputs sent up (the paper's second question, second half).

Data and models are real: scikit-learn's 8x8 handwritten digits (the held-out quarter the zoo's
pair was not trained on), the zoo's trained ``digits_compact`` (edge) and ``digits_full`` (cloud),
and for the skewed workload a compact model trained here, deterministically, for the frequent
classes only, with one extra "other" class for everything else (``forward_classes`` sends those
answers up however confident). Both tiers are ``tenantd`` daemons; the link between them is the
shaping relay.

Three configurations: the uniform workload (the test set as it comes) with the general compact
model; a skewed workload (``--skew-share`` of inputs from the ``--frequent`` classes) with the
general compact model; and the same skewed workload with the compact model trained for it.

1. Every input of each workload goes once through each deployed model, through the daemons with
   the client library (edge model on the edge daemon, full model on the cloud daemon): this gives
   each input's edge confidence and both answers, so the fraction forwarded and the accuracy of
   the combined answer follow exactly for any threshold.
2. Latency per threshold and link is the edge time plus, for the forwarded fraction, the cloud
   leg (cloud time + messaging, measured unshaped, + 2 x latency + bytes x 8 / rate).
3. The cascade pipeline itself then runs over the relay for a few thresholds on each link: its
   measured fraction, accuracy and mean latency are reported beside the figures from 1-2, so the
   derivation is checked by the real thing.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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

DEFAULT_LINKS = ((40.0, 2.0), (20.0, 10.0), (5.0, 100.0))
DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 21))
LIVE_THRESHOLDS = (0.5, 0.9, 0.99)


@dataclass
class Settings:
    links: tuple[tuple[float, float], ...] = DEFAULT_LINKS
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    live_thresholds: tuple[float, ...] = LIVE_THRESHOLDS
    live_inputs: int = 60
    frequent: tuple[int, ...] = (0, 1, 2)
    skew_share: float = 0.9
    workload_size: int = 450
    encoding: str = "none"
    fmt: str = "tflite"
    seed: int = 0
    out: Path = OUT_ROOT / "cascade"
    quick: bool = False


@dataclass
class Config:
    """One workload with one compact model."""

    name: str
    x: np.ndarray  # [n, 8, 8, 1] float32, as the .tflite models take them
    y: np.ndarray  # [n] true digits
    edge_model: str  # the compact model's name on the edge daemon
    labels: tuple[int, ...]  # edge class index -> digit (-1: "other")
    forward_classes: tuple[int, ...] = ()


@dataclass
class Outcomes:
    """Per input: the edge's confidence, its answer (a digit, or -1 for "other"), the cloud's."""

    confidence: np.ndarray
    edge_pred: np.ndarray
    cloud_pred: np.ndarray
    edge_ms: float
    cloud_leg_ms: float  # cloud daemon time + messaging, unshaped
    bytes_up: float
    bytes_down: float

    def forwarded(self, threshold: float) -> np.ndarray:
        return (self.confidence < threshold) | (self.edge_pred < 0)

    def accuracy(self, threshold: float, y: np.ndarray) -> float:
        answer = np.where(self.forwarded(threshold), self.cloud_pred, self.edge_pred)
        return float((answer == y).mean())

    def latency_ms(self, threshold: float, latency_ms: float, rate_mbps: float) -> float:
        wire = 8 * (self.bytes_up + self.bytes_down) / (rate_mbps * 1e6) * 1e3
        cloud = self.cloud_leg_ms + 2 * latency_ms + wire
        return float(self.edge_ms + self.forwarded(threshold).mean() * cloud)


# -------------------------------------------------------------------------------- data and models


def workloads(settings: Settings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(uniform x, y, skewed x, y) from the digits test split, NHWC float32."""
    from models.zoo import digits

    data = digits.load()
    x = data.x_test.transpose(0, 2, 3, 1).astype(np.float32)  # [n, 8, 8, 1]
    y = data.y_test
    rng = np.random.default_rng(settings.seed)
    n = min(settings.workload_size, len(y))
    uniform = rng.permutation(len(y))[:n]
    frequent = np.flatnonzero(np.isin(y, settings.frequent))
    rare = np.flatnonzero(~np.isin(y, settings.frequent))
    n_frequent = round(n * settings.skew_share)
    skewed = np.concatenate(
        [rng.choice(frequent, n_frequent, replace=True), rng.choice(rare, n - n_frequent, replace=False)]
    )
    skewed = rng.permutation(skewed)
    return x[uniform], y[uniform], x[skewed], y[skewed]


def train_frequent_compact(frequent: Sequence[int], path: Path, seed: int) -> Path:
    """The compact architecture trained for the frequent classes plus one "other" class, on the
    zoo's digits training split with the zoo's recipe (seeded, one thread), written as .tflite."""
    import torch
    from torch import nn

    from models.zoo import digits
    from models.zoo.arch import digits_compact
    from models.zoo.tflite_export import export_tflite, prepare

    if path.exists():
        return path
    data = digits.load()
    mapping = {digit: i for i, digit in enumerate(frequent)}
    other = len(frequent)
    y = np.array([mapping.get(int(d), other) for d in data.y_train], dtype=np.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = digits_compact()
        head = model.head
        head[-1] = nn.Linear(head[-1].in_features, other + 1)
        gen = torch.Generator().manual_seed(seed)
        xt, yt = torch.from_numpy(data.x_train), torch.from_numpy(y)
        opt = torch.optim.Adam(model.parameters(), lr=digits.LR)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(digits.EPOCHS):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), digits.BATCH):
                idx = order[start : start + digits.BATCH]
                opt.zero_grad()
                loss_fn(model(xt[idx]), yt[idx]).backward()
                opt.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    gm = prepare(model, torch.from_numpy(data.x_test[:1]))
    blob = export_tflite(
        gm,
        input_name="input",
        output_names=["logits"],
        description=f"digits compact for classes {list(frequent)} + other, trained by experiments.cascade",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


# ------------------------------------------------------------------------------------ measuring


def _labels(logits: np.ndarray) -> tuple[float, int]:
    z = logits.astype(np.float64).ravel()
    p = np.exp(z - z.max())
    p /= p.sum()
    return float(p.max()), int(p.argmax())


def outcomes(tiers: Tiers, config: Config, cloud_model: str, encoding: str) -> Outcomes:
    """Each input once through the compact model (edge daemon) and the full model (cloud daemon)."""

    enc = TensorEncoding.parse(encoding)
    confidence, edge_pred, cloud_pred, edge_ms, cloud_ms, up, down = [], [], [], [], [], [], []
    for x in config.x:
        sample = x[None]
        start = time.perf_counter()
        edge = tiers.edge.infer_detailed(config.edge_model, sample)
        edge_ms.append((time.perf_counter() - start) * 1e3)  # as the tenant sees it, like the live runs
        conf, cls = _labels(next(iter(edge.outputs.values())))
        confidence.append(conf)
        edge_pred.append(config.labels[cls])
        start = time.perf_counter()
        reply = tiers.cloud_relayed.call("infer", {"model": cloud_model}, tensors=[(None, sample)], encoding=enc)
        cloud_ms.append((time.perf_counter() - start) * 1e3)
        cloud_pred.append(_labels(reply.tensors[0][1])[1])
        up.append(reply.request_bytes)
        down.append(reply.wire_bytes)
    return Outcomes(
        np.array(confidence),
        np.array(edge_pred),
        np.array(cloud_pred),
        float(np.median(edge_ms)),
        float(np.median(cloud_ms)),
        float(np.median(up)),
        float(np.median(down)),
    )


def live(tiers: Tiers, config: Config, threshold: float, n: int, encoding: str) -> dict[str, float]:
    """The cascade pipeline itself on the first ``n`` inputs: fraction forwarded, accuracy, mean ms."""
    spec: dict[str, Any] = {
        "kind": "cascade",
        "edge_model": config.edge_model,
        "uplink": "cloud",
        "cloud_model": "full",
        "threshold": float(threshold),
        "encoding": encoding,
    }
    if config.forward_classes:
        spec["forward_classes"] = list(config.forward_classes)
    tiers.edge.set_pipeline("cascade", spec, replace=True)
    tiers.edge.infer_detailed("cascade", config.x[:1])  # warm
    forwarded, correct, totals = [], [], []
    for x, y in zip(config.x[:n], config.y[:n], strict=True):
        start = time.perf_counter()
        result = tiers.edge.infer_detailed("cascade", x[None])
        totals.append((time.perf_counter() - start) * 1e3)
        cloud = result.timings["tier"] == "cloud"
        _, cls = _labels(next(iter(result.outputs.values())))
        forwarded.append(cloud)
        correct.append((cls if cloud else config.labels[cls]) == y)
    return {
        "forwarded": float(np.mean(forwarded)),
        "accuracy": float(np.mean(correct)),
        "mean_ms": float(np.mean(totals)),
    }


# ------------------------------------------------------------------------------------ reporting


def plot(
    out: Path, results: dict[str, tuple[Config, Outcomes]], settings: Settings, live_rows: list[dict[str, Any]]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array(settings.thresholds)
    files = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (config, o) in results.items():
        ax1.plot(t, [o.accuracy(v, config.y) for v in t], marker="o", ms=3, label=name)
        ax2.plot(t, [o.forwarded(v).mean() for v in t], marker="o", ms=3, label=name)
    ax1.set_xlabel("threshold (forward when the edge's top probability is below it)")
    ax1.set_ylabel("accuracy of the combined answer")
    ax2.set_xlabel("threshold")
    ax2.set_ylabel("fraction of inputs sent to the cloud")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    files.append(out / "cascade_accuracy.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(settings.links), figsize=(4 * len(settings.links), 4), sharey=True, squeeze=False)
    for ax, link in zip(axes[0], settings.links, strict=True):
        label = link_label(*link)
        for name, (_config, o) in results.items():
            line = ax.plot(t, [o.latency_ms(v, *link) for v in t], label=f"{name}")
            got = [(r["threshold"], r["mean_ms"]) for r in live_rows if r["config"] == name and r["link"] == label]
            if got:
                ax.scatter(*zip(*got, strict=True), marker="x", color=line[0].get_color())
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("threshold")
    axes[0][0].set_ylabel("mean latency per input, ms (x: measured live)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle("cascade latency vs threshold (threshold 1 = every input to the cloud)")
    fig.tight_layout()
    files.append(out / "cascade_latency.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def summary_rows(results: dict[str, tuple[Config, Outcomes]], settings: Settings) -> list[dict[str, Any]]:
    """Per configuration and link: the threshold with the best accuracy among those within 1
    point of the full model's, and its latency reduction over sending everything up."""
    rows = []
    for name, (config, o) in results.items():
        full_acc = float((o.cloud_pred == config.y).mean())
        good = [t for t in settings.thresholds if o.accuracy(t, config.y) >= full_acc - 0.01] or [1.0]
        for link in settings.links:
            t = min(good, key=lambda v: o.latency_ms(v, *link))
            all_cloud = o.cloud_leg_ms + 2 * link[0] + 8 * (o.bytes_up + o.bytes_down) / (link[1] * 1e3)
            rows.append(
                {
                    "config": name,
                    "link": link_label(*link),
                    "threshold": t,
                    "forwarded": round(float(o.forwarded(t).mean()), 3),
                    "accuracy": round(o.accuracy(t, config.y), 4),
                    "edge_accuracy": round(float((o.edge_pred == config.y).mean()), 4),
                    "cloud_accuracy": round(full_acc, 4),
                    "latency_ms": round(o.latency_ms(t, *link), 2),
                    "all_cloud_ms": round(all_cloud, 2),
                    "speedup": round(all_cloud / max(1e-9, o.latency_ms(t, *link)), 2),
                }
            )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.cascade",
        description="Compact model at the edge, full model in the cloud, unsure inputs sent up: "
        "accuracy, fraction forwarded, bytes and latency across thresholds and links.",
    )
    parser.add_argument(
        "--links", default=",".join(f"{a:g}/{b:g}" for a, b in DEFAULT_LINKS), help="LATENCY_MS/RATE_MBPS,..."
    )
    parser.add_argument("--frequent", default="0,1,2", help="the skewed workload's frequent classes")
    parser.add_argument(
        "--skew-share", type=float, default=0.9, help="share of skewed inputs from the frequent classes"
    )
    parser.add_argument("--live-inputs", type=int, default=60, help="inputs per live pipeline run")
    parser.add_argument("--encoding", default="none", help="how inputs go up (none, zlib, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default experiments/out/cascade)")
    parser.add_argument("--quick", action="store_true", help="fewer inputs and links (a test runs it)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    links = parse_links(args.links)
    try:
        frequent = tuple(int(c) for c in args.frequent.split(",") if c)
    except ValueError:
        frequent = ()
    if not frequent or not set(frequent) <= set(range(10)):
        raise ExperimentError(f"--frequent {args.frequent!r}: digits 0-9, comma-separated")
    if not 0 < args.skew_share < 1:
        raise ExperimentError("--skew-share must be between 0 and 1")
    s = Settings(
        links=links,
        frequent=frequent,
        skew_share=args.skew_share,
        live_inputs=args.live_inputs,
        encoding=args.encoding,
        seed=args.seed,
        out=args.out or (OUT_ROOT / ("cascade-quick" if args.quick else "cascade")),
        quick=args.quick,
    )
    if args.quick:
        s.links, s.workload_size, s.live_inputs, s.live_thresholds = ((10.0, 10.0),), 60, 20, (0.9,)
        s.thresholds = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)
    return s


def run(settings: Settings) -> str:
    from tqdm import tqdm

    from models import zoo

    for name in ("digits_compact", "digits_full"):
        try:
            zoo.path(name, settings.fmt)
        except zoo.ZooError as exc:
            raise ExperimentError(f"{exc} (or run: make models)") from None
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    check_out_dir(settings.out, "cascade", parameters, resume=False)
    ux, uy, sx, sy = workloads(settings)
    frequent_model = train_frequent_compact(
        settings.frequent,
        settings.out / "work" / f"compact_{'-'.join(map(str, settings.frequent))}.tflite",
        settings.seed,
    )
    general = tuple(range(10))
    special = (*settings.frequent, -1)
    configs = [
        Config("uniform, general compact", ux, uy, "compact", general),
        Config("skewed, general compact", sx, sy, "compact", general),
        Config("skewed, compact for frequent", sx, sy, "compact-frequent", special, (len(settings.frequent),)),
    ]
    results: dict[str, tuple[Config, Outcomes]] = {}
    live_rows: list[dict[str, Any]] = []
    steps = len(configs) * (1 + len(settings.links) * len(settings.live_thresholds))
    with (
        two_tiers(settings.out / "work" / "daemons") as tiers,
        tqdm(total=steps, desc="cascade", file=sys.stderr) as bar,
    ):
        tiers.edge.submit_model(zoo.path("digits_compact", settings.fmt), "compact")
        tiers.edge.submit_model(frequent_model, "compact-frequent")
        tiers.cloud.submit_model(zoo.path("digits_full", settings.fmt), "full")
        for config in configs:
            bar.set_postfix_str(config.name)
            results[config.name] = (config, outcomes(tiers, config, "full", settings.encoding))
            bar.update(1)
        for link in settings.links:
            tiers.set_link(Link(latency_ms=link[0], bandwidth_bps=link[1] * 1e6))
            for config in configs:
                for threshold in settings.live_thresholds:
                    got = live(tiers, config, threshold, settings.live_inputs, settings.encoding)
                    o = results[config.name][1]
                    subset = Outcomes(
                        o.confidence[: settings.live_inputs], o.edge_pred[: settings.live_inputs],
                        o.cloud_pred[: settings.live_inputs], o.edge_ms, o.cloud_leg_ms, o.bytes_up, o.bytes_down,
                    )  # fmt: skip
                    live_rows.append(
                        {
                            "config": config.name,
                            "link": link_label(*link),
                            "threshold": threshold,
                            "forwarded_live": round(got["forwarded"], 3),
                            "forwarded_derived": round(float(subset.forwarded(threshold).mean()), 3),
                            "accuracy_live": round(got["accuracy"], 4),
                            "accuracy_derived": round(subset.accuracy(threshold, config.y[: settings.live_inputs]), 4),
                            "mean_ms": round(got["mean_ms"], 2),
                            "modeled_ms": round(subset.latency_ms(threshold, *link), 2),
                        }
                    )
                    bar.update(1)
        tiers.set_link(Link())

    with (settings.out / "cascade.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        labels = [link_label(*link) for link in settings.links]
        writer.writerow(
            ["config", "threshold", "forwarded", "accuracy", "bytes_up_per_input", *[f"latency_ms@{x}" for x in labels]]
        )
        for name, (config, o) in results.items():
            for t in settings.thresholds:
                forwarded = float(o.forwarded(t).mean())
                latencies = [round(o.latency_ms(t, *link), 3) for link in settings.links]
                accuracy = round(o.accuracy(t, config.y), 4)
                writer.writerow([name, t, round(forwarded, 4), accuracy, round(forwarded * o.bytes_up, 1), *latencies])
    with (settings.out / "cascade_live.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(live_rows[0]))
        writer.writeheader()
        writer.writerows(live_rows)
    best = summary_rows(results, settings)
    plots = plot(settings.out, results, settings, live_rows)
    write_json(
        settings.out / "run.json",
        {
            "experiment": "cascade",
            "parameters": parameters,
            "machine": machine_info(),
            "versions": versions(),
            "summary": best,
            "live": live_rows,
            "finished": now_iso(),
        },
    )
    headers = [
        "config",
        "link",
        "threshold",
        "sent up",
        "accuracy",
        "edge acc",
        "cloud acc",
        "ms",
        "all-cloud ms",
        "speed-up",
    ]
    rows = [
        [b["config"], b["link"], b["threshold"], fmt(b["forwarded"], "{:.0%}"), fmt(b["accuracy"], "{:.3f}"),
         fmt(b["edge_accuracy"], "{:.3f}"), fmt(b["cloud_accuracy"], "{:.3f}"), fmt(b["latency_ms"]),
         fmt(b["all_cloud_ms"]), fmt(b["speedup"], "{:.1f}x")]
        for b in best
    ]  # fmt: skip
    live_table = markdown_table(
        ["config", "link", "threshold", "sent up live / derived", "accuracy live / derived", "mean ms live / modeled"],
        [
            [r["config"], r["link"], r["threshold"], f"{r['forwarded_live']:.0%} / {r['forwarded_derived']:.0%}",
             f"{r['accuracy_live']:.3f} / {r['accuracy_derived']:.3f}", f"{r['mean_ms']:.1f} / {r['modeled_ms']:.1f}"]
            for r in live_rows
        ],
    )  # fmt: skip
    text = "\n".join(
        [
            "# Compression cascade across an edge and a cloud daemon",
            "",
            f"Run {now_iso()}; digits test split ({len(uy)} inputs per workload; skewed: "
            f"{settings.skew_share:.0%} from classes {list(settings.frequent)}); encoding {settings.encoding}. "
            "Both daemons on this CPU.",
            "",
            "Per configuration and link, the threshold with the lowest latency among those whose accuracy is within",
            "1 point of the full model's, against sending every input to the cloud:",
            "",
            markdown_table(headers, rows),
            "",
            "Live pipeline runs (first inputs of each workload) against the figures derived from per-input outcomes:",
            "",
            live_table,
            "",
            *[f"![{p.stem}]({p.name})" for p in plots],
            "",
        ]
    )
    (settings.out / "report.md").write_text(text)
    return plain_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        settings = settings_from(args)
        table = run(settings)
    except ExperimentError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"\ncascade: done in {time.monotonic() - started:.0f} s; report, CSV and plots in {settings.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
