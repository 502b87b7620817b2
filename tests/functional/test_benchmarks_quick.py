"""The benchmark harness must not rot: ``benchmarks/run.py --quick`` runs end to end and writes every key.

Runs the quick mode in a subprocess with a temporary output file and checks that every required key is
there with a number, or null with a non-empty ``<key>_reason`` beside it, plus the machine/date/commit
stamp. No figure is compared with a target here (benchmarks report, they do not assert on time).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.parts import unavailable

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"

REQUIRED = [
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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.xdist_group("benchmarks")
def test_quick_benchmarks_write_every_key(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (the benchmarks need it)")
    out = tmp_path / "bench-quick.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert done.returncode == 0, (
        f"run.py --quick failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    result = json.loads(out.read_text())

    assert result["quick"] is True
    assert isinstance(result["machine"], dict) and result["machine"].get("cpus")
    assert isinstance(result["date"], str) and result["date"].endswith("Z")
    assert isinstance(result["commit"], str) and result["commit"]
    for key in REQUIRED:
        assert key in result, f"{key} missing from the quick benchmark output"
        value = result[key]
        if value is None:
            reason = result.get(f"{key}_reason")
            assert isinstance(reason, str) and reason.strip(), f"{key} is null without a reason"
        else:
            assert _is_number(value), f"{key} is neither a number nor null: {value!r}"
    # the parts that need only loopback (redis, the emulator, manager processes) really ran
    for key in ("pickup_warm_p95_s", "api_units_per_hour_50", "emulator_rps"):
        assert _is_number(result.get(key)), f"{key}: {result.get(f'{key}_reason')}"
    # a benchmark that failed says so in its reason; none may fail on a machine that can run it
    failed = {
        k: v for k, v in result.items() if k.endswith("_reason") and "benchmark failed" in str(v)
    }
    assert not failed, f"benchmarks failed: {failed}"
