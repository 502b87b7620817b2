"""The emulator's own requests/second, to show whether it is a bottleneck of the other figures.

Runs the emulator team's ``benchmarks/bench_emulator.py`` (the emulator in its own process, several
client threads on loopback) and reports its ``emulator_rps`` (the slowest of its scenarios) with the
per-scenario figures in the details.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench_support import Context, Figures, Skip

NAME = "emulator"
KEYS = ["emulator_rps"]
SCRIPT = Path(__file__).resolve().parent / "bench_emulator.py"


def run(ctx: Context) -> Figures:
    if not SCRIPT.exists():
        raise Skip("benchmarks/bench_emulator.py is not there yet")
    out = ctx.tmp / "emulator-rps.json"
    args = [sys.executable, str(SCRIPT), "--json", str(out)]
    if ctx.quick:
        args.append("--quick")
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"bench_emulator.py exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}"
        )
    data = json.loads(out.read_text())
    figures = Figures()
    figures.set("emulator_rps", data.get("emulator_rps"))
    for key in ("emulator_rps_conditional", "emulator_rps_plain_get"):
        if key in data:
            figures.set(key, data[key])
    figures.details["emulator"] = data
    return figures
