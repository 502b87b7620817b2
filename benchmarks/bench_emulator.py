"""How many requests per second the GitHub emulator sustains on loopback.

Later benchmarks (reconcile, API cost, pickup latency) use this figure to show the emulator is
not their bottleneck. The emulator runs as its own process (``python -m github_emulator``), as in
the demo; several client threads hammer it for a bounded time per scenario.

    python benchmarks/bench_emulator.py                 # 3 s per scenario, 8 threads
    python benchmarks/bench_emulator.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from github_emulator.testing import Control, spawn_emulator_process

TOKEN = "bench-token"
ORG = "bench"


def run_scenario(
    url: str, path: str, headers: dict[str, str], expect: int, threads: int, duration: float
) -> dict[str, Any]:
    """Issue ``GET path`` from ``threads`` threads for ``duration`` seconds; count answers."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counts = [0] * threads
    errors = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_gate = threading.Event()
    stop_at = [0.0]

    def worker(i: int) -> None:
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            conn = http.client.HTTPConnection(host, port, timeout=30)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == expect:
                    counts[i] += 1
                    latencies[i].append(time.perf_counter() - began)
                else:
                    errors[i] += 1
            except OSError:
                errors[i] += 1
            finally:
                conn.close()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + duration
    start_gate.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - began
    done = sum(counts)
    lat = sorted(x for per in latencies for x in per)
    return {
        "requests": done,
        "errors": sum(errors),
        "seconds": round(elapsed, 3),
        "rps": round(done / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "p95_ms": round(lat[int(len(lat) * 0.95) - 1] * 1000, 2) if lat else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per scenario")
    parser.add_argument("--threads", type=int, default=8, help="client threads")
    parser.add_argument("--runners", type=int, default=50, help="runners in the listed org")
    parser.add_argument("--quick", action="store_true", help="1 s per scenario (CI smoke)")
    parser.add_argument("--json", type=Path, help="write results as JSON here")
    args = parser.parse_args(argv)
    duration = 1.0 if args.quick else args.duration

    proc, url = spawn_emulator_process(
        [
            "--org",
            ORG,
            "--token",
            TOKEN,
            "--rate-limit",
            "100000000",
            "--secondary-limit",
            "0",
            "--log-level",
            "WARNING",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        control = Control(url)
        ids = control.add_runners(args.runners, org=ORG, name_prefix="bench")
        auth = {"Authorization": f"token {TOKEN}", "Accept": "application/vnd.github+json"}
        conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=30)
        conn.request("GET", f"/orgs/{ORG}/actions/runners?per_page=100", headers=auth)
        first = conn.getresponse()
        first.read()
        etag = first.getheader("ETag") or ""
        conn.close()
        scenarios = {
            "list_runners_conditional_304": (
                f"/orgs/{ORG}/actions/runners?per_page=100",
                {**auth, "If-None-Match": etag},
                304,
            ),
            "get_runner_200": (f"/orgs/{ORG}/actions/runners/{ids[0]}", auth, 200),
            f"list_{args.runners}_runners_200": (
                f"/orgs/{ORG}/actions/runners?per_page=100",
                auth,
                200,
            ),
        }
        results = {
            name: run_scenario(url, path, headers, expect, args.threads, duration)
            for name, (path, headers, expect) in scenarios.items()
        }
        stats = control.stats()
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    print(
        f"github_emulator on loopback: {args.threads} client threads, {duration:g} s per scenario"
    )
    print(f"{'scenario':34} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:34} {r['rps']:>9.1f} {r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['errors']:>7}")
    out = {
        "emulator_rps": min(r["rps"] for r in results.values()),
        "emulator_rps_conditional": results["list_runners_conditional_304"]["rps"],
        "emulator_rps_plain_get": results["get_runner_200"]["rps"],
        "threads": args.threads,
        "seconds_per_scenario": duration,
        "scenarios": results,
        "not_modified_served": stats["not_modified"],
    }
    print(f"emulator_rps (slowest scenario): {out['emulator_rps']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
