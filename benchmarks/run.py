#!/usr/bin/env python3
"""Run the benchmarks and write the figures: ``python benchmarks/run.py [--quick] [--out FILE] [--only NAME,...]``.

* full mode (``tox -e bench``): every benchmark at its full size; writes ``benchmarks/results/latest.json``
  and the table in ``BENCHMARKS.md``.
* ``--quick``: a few seconds per benchmark (smaller fleets, fewer rounds), for CI: the harness must not rot.
  Quick figures are not comparable with the full ones and never go into BENCHMARKS.md unless asked
  (``--markdown``).

Every required key is in the output: a number, or ``null`` with ``<key>_reason`` beside it. A benchmark that
fails does not stop the others; its keys become null with the error as the reason. Nothing here asserts on
time: the figures are reported, and BENCHMARKS.md compares them with the targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_support  # noqa: E402
from bench_support import Context, Figures, Skip  # noqa: E402

DEFAULT_OUT = HERE / "results" / "latest.json"
DEFAULT_MARKDOWN = bench_support.ROOT / "BENCHMARKS.md"

#: Keys every result file holds (issue 8), each a number or null with ``<key>_reason``.
REQUIRED_KEYS = [
    "pickup_warm_p95_s",
    "pickup_cold_lxd_p95_s",
    "lxd_launch_s",
    "api_units_per_hour_500",
    "api_units_per_hour_500_nomadtools",
    "api_units_per_hour_500_per_runner",
    "api_units_per_hour_500_unconditional",
    "reconcile_1000_s",
    "create_200_at_1s_wall_s",
    "rss_1000_mb",
    "emulator_rps",
    "image_build_cold_s",
    "image_build_warm_s",
]
STAMP_KEYS = ["machine", "date", "commit", "quick"]

#: Benchmarks in the order they run: the image is built before the LXD pickup needs it.
ORDER = ["image", "lxd", "pickup", "api", "scale", "emulator"]


def _load(name: str) -> ModuleType:
    import importlib

    module = {
        "image": "bench_image",
        "lxd": "bench_lxd",
        "pickup": "bench_pickup",
        "api": "bench_api",
        "scale": "bench_scale",
        "emulator": "bench_emulator_rps",
    }[name]
    return importlib.import_module(module)


def run_one(name: str, ctx: Context) -> Figures:
    """Run one benchmark; failures and skips become null figures with the reason."""
    started = time.monotonic()
    figures = Figures()
    try:
        module = _load(name)
    except Exception as exc:  # a missing module is reported, not fatal
        figures = Figures()
        figures.details[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
        return figures
    keys: list[str] = list(getattr(module, "KEYS", []))
    try:
        figures = module.run(ctx)
    except Skip as exc:
        figures = Figures()
        figures.null(keys, str(exc))
    except Exception as exc:  # one benchmark failing must not hide the others
        figures = Figures()
        figures.null(keys, f"benchmark failed: {type(exc).__name__}: {exc}"[:500])
        figures.details[f"{name}_traceback"] = traceback.format_exc()[-4000:]
        ctx.log(f"{name}: FAILED: {exc}")
    for key in keys:
        if key not in figures.values:
            figures.set(key, None, "not produced by the benchmark")
    figures.details.setdefault("wall_s", {})[name] = round(time.monotonic() - started, 2)
    ctx.log(f"{name}: done in {time.monotonic() - started:.1f}s")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per benchmark (CI)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"result JSON (default {DEFAULT_OUT})"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(ORDER)}")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="write the BENCHMARKS.md table here (default: BENCHMARKS.md in full mode with the default --out)",
    )
    parser.add_argument("--verbose", action="store_true", help="log the parts' INFO lines")
    parser.add_argument(
        "--keep-scratch",
        action="store_true",
        help="keep the scratch directory (manager logs and configs)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="RESULT_JSON",
        help="only render the BENCHMARKS.md table (--markdown, default BENCHMARKS.md) from an existing result file",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if not args.verbose:
        logging.getLogger("github_runner_manager").setLevel(logging.ERROR)
        logging.getLogger("github_emulator").setLevel(logging.ERROR)

    if args.render is not None:
        import bench_report

        target = args.markdown or DEFAULT_MARKDOWN
        target.write_text(bench_report.render(json.loads(args.render.read_text())))
        print(f"table written to {target}")
        return 0

    selected = [n.strip() for n in args.only.split(",") if n.strip()] or list(ORDER)
    unknown = sorted(set(selected) - set(ORDER))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(ORDER)}")
    out = args.out or DEFAULT_OUT
    markdown = args.markdown
    if markdown is None and args.out is None and not args.quick and not args.only:
        markdown = DEFAULT_MARKDOWN

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    started = time.monotonic()
    result: dict[str, Any] = {
        "machine": bench_support.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": bench_support.git_commit(),
        "quick": bool(args.quick),
    }
    figures = Figures()
    with bench_support.scratch(prefix="ghrm-bench-", keep=args.keep_scratch) as tmp:
        if args.keep_scratch:
            log(f"scratch directory (kept): {tmp}")
        ctx = Context(quick=args.quick, tmp=tmp, log=log)
        for name in ORDER:
            if name not in selected:
                continue
            log(f"{name}: start ({'quick' if args.quick else 'full'} mode)")
            figures.update(run_one(name, ctx))
    for key in REQUIRED_KEYS:
        if key not in figures.values:
            figures.set(key, None, "not selected (--only)")
    result.update(figures.values)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["load_avg_end"] = bench_support.load_average()
    result["details"] = figures.details
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    log(f"figures written to {out} ({result['wall_s']}s)")
    if markdown is not None:
        import bench_report

        markdown.write_text(bench_report.render(result))
        log(f"table written to {markdown}")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
