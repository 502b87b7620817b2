"""Scale: reconcile time at 1,000 runners, wall time of 200 creates at 1 s each, manager memory at 1,000.

* ``reconcile_1000_s``: median wall time of ``RunnerManager.reconcile()`` at steady state with 1,000 idle
  runners (Fake backend, memory mode; the emulator holding the 1,000 runners as simulated online ones):
  GitHub listing (conditional), backend listing, Redis records, the planner, no action.
  ``planner_1000_s`` is ``planner.plan()`` alone on 1,000 observed runners.
* ``create_200_at_1s_wall_s``: one ``reconcile()`` from 0 to 200 runners with a Fake backend whose create
  takes 1 s (``concurrency`` at its default). With the emulator's GitHub-like secondary rate limit on
  (180 writes a minute) as well, in full mode: ``create_200_at_1s_secondary_limit_wall_s``.
* ``rss_1000_mb``: resident memory (psutil) of a ``github-runner-manager run`` process holding 1,000
  runners after two steady-state reconciles; ``rss_1000_peak_mb`` is its high-water mark (VmHWM).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench_support import (
    Context,
    Figures,
    ManagerProcess,
    fleet_world,
    in_process_manager,
    make_runners_online,
    manager_config,
    start_emulator,
    start_redis,
    wait_for,
    write_secret,
)

NAME = "scale"
KEYS = ["reconcile_1000_s", "create_200_at_1s_wall_s", "rss_1000_mb"]
TOKEN = "ghp_bench_scale_token"
PREFIX = "bs"


def _config(
    emu: Any, redis: Any, work: Path, n: int, backend: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    orgs, _repos = fleet_world()
    return manager_config(
        github_url=emu.url,
        token_file=write_secret(work / "token", TOKEN),
        redis_url=redis.url,
        paths=orgs,
        state_dir=work / "state",
        group={
            "name": "pool", "labels": ["self-hosted", "linux", "x64"], "backend": "fake",
            "min_idle": n, "max_runners": n, "paths": orgs,
        },
        backends={"fake": backend},
        prefix=PREFIX,
        unit="bench-scale",
        **extra,
    )  # fmt: skip


def _emulator(**settings: Any) -> Any:
    orgs, repos = fleet_world()
    return start_emulator(orgs=orgs, repos=repos, tokens=[TOKEN], **settings)


def reconcile_at(ctx: Context, redis: Any, n: int, samples: int) -> dict[str, Any]:
    emu = _emulator(secondary_limit=0, rate_limit=10**9)
    redis.flush()
    try:
        manager = in_process_manager(
            _config(emu, redis, ctx.tmp / f"scale-rec-{n}", n, {"mode": "memory"})
        )
        try:
            t0 = time.monotonic()
            manager.reconcile()
            converge = time.monotonic() - t0
            idle = manager.store.counts().get("pool", {}).get("idle", 0)
            make_runners_online(emu, f"{PREFIX}-")
            manager.reconcile()  # fills the ETag cache
            times = []
            for _ in range(samples):
                t0 = time.monotonic()
                manager.reconcile()
                times.append(time.monotonic() - t0)
            return {
                "runners": idle,
                "converge_s": converge,
                "steady_s": times,
                "median_s": statistics.median(times),
            }
        finally:
            manager.close()
    finally:
        emu.stop()


def planner_at(n: int, samples: int) -> float:
    """Median seconds of ``planner.plan`` over ``n`` idle registered runners (no I/O)."""
    from github_runner_manager import planner
    from github_runner_manager.config import RunnerGroup

    group = RunnerGroup(
        name="pool", labels=["self-hosted"], backend="fake", min_idle=n, max_runners=n
    )
    now = time.time()
    runners = [
        planner.ObservedRunner(
            name=f"{PREFIX}-pool-{i:06d}", group="pool", owner="bench-a" if i % 2 else "bench-b",
            state=planner.RunnerState.IDLE, created_at=now - 600, github_id=i + 1, github_status="online",
            github_busy=False, instance_exists=True, registered=True, job_unfinished=False,
        )
        for i in range(n)
    ]  # fmt: skip
    inp = planner.PlanInput(
        demands=[planner.GroupDemand(group=group, pending_jobs=0, quantity=None, owners=("bench-a", "bench-b"))],
        runners=runners, orphan_instances=[], orphan_github_runners=[], max_total_runners=0,
        per_owner_max_runners=0, owner_counts_elsewhere={}, total_elsewhere=0, now=now,
        register_timeout=300.0, offline_timeout=120.0, flush="none",
    )  # fmt: skip
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        planned = planner.plan(inp)
        times.append(time.perf_counter() - t0)
    assert not planned.creates and not planned.deletes, "a steady fleet needs no action"
    return statistics.median(times)


def create_wall(
    ctx: Context, redis: Any, n: int, latency: float, **emulator_settings: Any
) -> dict[str, Any]:
    emu = _emulator(**emulator_settings)
    redis.flush()
    try:
        manager = in_process_manager(
            _config(
                emu,
                redis,
                ctx.tmp / f"scale-create-{n}",
                n,
                {"mode": "memory", "create_latency": latency},
            )
        )
        try:
            t0 = time.monotonic()
            manager.reconcile()
            wall = time.monotonic() - t0
            counts = manager.store.counts().get("pool", {})
            stats = manager.github.stats()
            return {
                "runners": n,
                "create_latency_s": latency,
                "concurrency": manager.config.concurrency,
                "wall_s": wall,
                "idle_after": counts.get("idle", 0),
                "rate_limit_waits": stats.get("rate_limit_waits"),
                "waited_seconds": stats.get("waited_seconds"),
            }
        finally:
            manager.close()
    finally:
        emu.stop()


def rss_at(ctx: Context, redis: Any, n: int) -> dict[str, Any]:
    import psutil

    from github_runner_manager.store import Store

    emu = _emulator(secondary_limit=0, rate_limit=10**9)
    redis.flush()
    work = ctx.tmp / f"scale-rss-{n}"
    proc = ManagerProcess(
        _config(emu, redis, work, n, {"mode": "memory"}, reconcile_interval=5.0), work / "manager"
    )
    store = Store(redis.url)
    try:
        started = time.monotonic()
        wait_for(
            lambda: proc.check() or store.counts().get("pool", {}).get("idle", 0) >= n,
            600,
            f"{n} idle runners",
            interval=0.5,
        )
        fill_s = time.monotonic() - started
        make_runners_online(emu, f"{PREFIX}-")
        stats = emu.emulator.stats

        def listings() -> int:
            with stats._lock:  # read-only
                return int(
                    sum(
                        v
                        for k, v in stats.requests.items()
                        if k.startswith("actions/list-self-hosted-runners")
                    )
                )

        pages = 2 * -(-n // 2 // 100)  # two orgs, 100 runners a page
        mark = listings()
        wait_for(
            lambda: proc.check() or listings() >= mark + 2 * pages,
            120,
            "two steady-state reconciles",
            0.2,
        )
        info = psutil.Process(proc.pid)
        rss = info.memory_info().rss / 2**20
        peak = None
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
        return {
            "runners": store.counts().get("pool", {}).get("idle", 0),
            "rss_mb": rss,
            "peak_mb": peak,
            "threads": info.num_threads(),
            "fill_s": fill_s,
        }
    finally:
        proc.stop()
        store.close()
        emu.stop()


def run(ctx: Context) -> Figures:
    figures = Figures()
    n_rec = 100 if ctx.quick else 1000
    n_create = 64 if ctx.quick else 200
    redis = start_redis(ctx.tmp / "redis-scale")
    details: dict[str, Any] = {}
    figures.details["scale"] = details
    try:
        ctx.log(f"scale: reconcile at {n_rec} runners")
        rec = reconcile_at(ctx, redis, n_rec, samples=2 if ctx.quick else 7)
        details[f"reconcile_{n_rec}"] = rec
        figures.set(f"reconcile_{n_rec}_s", rec["median_s"])
        figures.set(f"reconcile_converge_{n_rec}_s", rec["converge_s"])
        figures.set(f"planner_{n_rec}_s", planner_at(n_rec, samples=5 if ctx.quick else 21))
        if ctx.quick:
            figures.set(
                "reconcile_1000_s", None, f"skipped in quick mode (reconcile_{n_rec}_s instead)"
            )

        ctx.log(f"scale: {n_create} creates at 1 s each")
        created = create_wall(ctx, redis, n_create, 1.0, secondary_limit=0, rate_limit=10**9)
        details[f"create_{n_create}"] = created
        key = f"create_{n_create}_at_1s_wall_s"
        if created["idle_after"] < n_create:
            figures.set(
                key, None, f"only {created['idle_after']} of {n_create} runners were created"
            )
        else:
            figures.set(key, created["wall_s"])
        if ctx.quick:
            figures.set("create_200_at_1s_wall_s", None, f"skipped in quick mode ({key} instead)")
            figures.set("create_200_at_1s_secondary_limit_wall_s", None, "skipped in quick mode")
        else:
            ctx.log("scale: 200 creates at 1 s each, with GitHub's secondary rate limit")
            limited = create_wall(ctx, redis, n_create, 1.0)
            details["create_200_secondary_limit"] = limited
            figures.set("create_200_at_1s_secondary_limit_wall_s", limited["wall_s"])

        n_rss = 100 if ctx.quick else 1000
        ctx.log(f"scale: resident memory of a manager process holding {n_rss} runners")
        rss = rss_at(ctx, redis, n_rss)
        details[f"rss_{n_rss}"] = rss
        figures.set(f"rss_{n_rss}_mb", rss["rss_mb"])
        figures.set(f"rss_{n_rss}_peak_mb", rss["peak_mb"])
        if ctx.quick:
            figures.set("rss_1000_mb", None, f"skipped in quick mode (rss_{n_rss}_mb instead)")
    finally:
        redis.stop()
    return figures
