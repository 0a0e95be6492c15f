"""Command line of the model zoo: ``python -m models build [NAMES] [--formats ...]`` and ``list``.

This module owns only argument parsing and printing; the work is in :mod:`models.zoo`.
"""

from __future__ import annotations

import argparse
import sys
import time

from models import zoo


def _build(args: argparse.Namespace) -> int:
    start = time.monotonic()
    results = zoo.build(
        args.names or None,
        args.formats or None,
        root=args.out,
        force=args.force,
        progress=not args.no_progress,
        log=lambda line: print(line, flush=True),
    )
    built = sum(not r.cached for r in results)
    total = sum(r.metadata["file_bytes"] for r in results)
    where = zoo.cache_dir(args.out)
    print(f"{len(results)} files ({built} built, {len(results) - built} cached), {total / 1e6:.1f} MB in {where}, "
          f"{time.monotonic() - start:.0f} s")  # fmt: skip
    return 0


def _list(args: argparse.Namespace) -> int:
    for spec in zoo.MODELS.values():
        built = [f for f in spec.formats if zoo.file_path(spec.name, f, args.out).exists()]
        print(f"{spec.name:24} {spec.task:22} {spec.kind:9} built: {', '.join(built) or '-':40} {spec.summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build models into the cache folder")
    b.add_argument("names", nargs="*", help=f"models to build (default: all): {', '.join(zoo.MODELS)}")
    b.add_argument("--formats", nargs="+", choices=zoo.FORMATS, help="formats to build (default: each model's all)")
    b.add_argument("--out", help="cache folder (default: $TENANTD_MODELS_DIR or .cache/models)")
    b.add_argument("--force", action="store_true", help="rebuild files that are cached")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (one line per file still)")
    b.set_defaults(func=_build)
    ls = sub.add_parser("list", help="list the zoo's models and which formats are built")
    ls.add_argument("--out", help="cache folder")
    ls.set_defaults(func=_list)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except zoo.ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
