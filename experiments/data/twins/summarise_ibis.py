"""Summarise umassos/ibis's published per-request measurements into the small CSVs beside this
file: per model (and load), the number of requests and the mean response time in ms, with the
source (repository, path, commit) on every row. Run once against a checkout of ibis:

    python experiments/data/twins/summarise_ibis.py /path/to/ibis COMMIT

The raw files hold thousands of rows; only these summaries are kept here. ``role`` says what the
twins may learn from a row: ``fit`` rows (single-model, sequential runs) calibrate; ``validation``
rows (concurrent runs) are only ever compared against, never fitted.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = "umassos/ibis"


def _fcfs_or_ps(ibis: Path, commit: str, name: str, out: str) -> None:
    rows = list(csv.DictReader((ibis / "data" / name).open()))
    order: list[str] = []
    by: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["model"] not in order:
            order.append(r["model"])
        by.setdefault((r["model"], r["process_type"]), []).append(float(r["response_time"]))
    with (HERE / out).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "model",
                "order",
                "process_type",
                "role",
                "n",
                "mean_ms",
                "median_ms",
                "stdev_ms",
                "repository",
                "path",
                "commit",
            ]
        )
        for ptype, role in (("Sequential", "fit"), ("Concurrent", "validation")):
            for i, m in enumerate(order):
                v = by[(m, ptype)]
                w.writerow(
                    [
                        m,
                        i,
                        ptype,
                        role,
                        len(v),
                        f"{statistics.mean(v):.3f}",
                        f"{statistics.median(v):.3f}",
                        f"{statistics.stdev(v):.3f}",
                        REPO,
                        f"data/{name}",
                        commit,
                    ]
                )


def _queueing(ibis: Path, commit: str) -> None:
    with (HERE / "ibis_queueing_validation.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "experiment",
                "vary_rho",
                "model",
                "input_rate_per_s",
                "role",
                "n",
                "mean_response_ms",
                "repository",
                "path",
                "commit",
            ]
        )
        for path in sorted((ibis / "data" / "queueing_validation").glob("*.csv")):
            rows = list(csv.DictReader(path.open()))
            experiment = path.stem.removeprefix("queuing_tpu_")
            groups: dict[tuple[str, str], list[dict[str, str]]] = {}
            for r in rows:
                groups.setdefault((r["vary_rho"], r["model"]), []).append(r)
            for (rho, model), rs in sorted(groups.items(), key=lambda kv: (float(kv[0][0]), kv[0][1])):
                resp = [(float(r["end_time"]) - float(r["start_time"])) * 1e3 for r in rs]
                w.writerow(
                    [
                        experiment,
                        rho,
                        model,
                        f"{float(rs[0]['input_rate']):.4g}",
                        "validation",
                        len(rs),
                        f"{statistics.mean(resp):.3f}",
                        REPO,
                        f"data/queueing_validation/{path.name}",
                        commit,
                    ]
                )


def main() -> None:
    ibis, commit = Path(sys.argv[1]), sys.argv[2]
    _fcfs_or_ps(ibis, commit, "edgetpu_fcfs_validation.csv", "ibis_edgetpu_fcfs.csv")
    _fcfs_or_ps(ibis, commit, "trt_ps_validation.csv", "ibis_trt_ps.csv")
    _queueing(ibis, commit)


if __name__ == "__main__":
    main()
