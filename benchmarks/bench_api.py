"""GitHub API cost at steady state: this project's reconcile + missed-webhook poll vs three alternatives.

World: 2 orgs x 25 repositories (50) in the emulator, a fleet of N idle runners registered at the two
orgs (N/2 each) -- created by the manager itself (Fake backend, memory mode), then turned into simulated
online runners through the emulator's state, so 1,000 runners need no process. No job runs while the
steady state is measured.

This project's cycle is what the service does: ``RunnerManager.reconcile()`` every ``reconcile_interval``
and ``RunnerManager.poll_queued_jobs()`` every ``github.poll_interval``; per hour is extrapolated with the
defaults of the config (60 s and 30 s). The baselines (benchmarks/baselines.py) run on the same emulator,
against the same fleet, in the same run, one cycle per ``reconcile_interval``.

Units and requests are counted by the clients (GitHubClient.stats(); the baselines count the same way)
and by the emulator per token; the details carry both.
"""

from __future__ import annotations

import time
from typing import Any

from baselines import (
    Baseline,
    CountingClient,
    ListAllBaseline,
    NomadtoolsBaseline,
    PerRunnerBaseline,
)
from bench_support import (
    Context,
    Figures,
    emulator_units,
    fleet_world,
    in_process_manager,
    make_runners_online,
    manager_config,
    start_emulator,
    start_redis,
    token_key,
    wait_for,
    write_secret,
)

NAME = "api"
KEYS = [
    "api_units_per_hour_500",
    "api_units_per_hour_500_nomadtools",
    "api_units_per_hour_500_per_runner",
    "api_units_per_hour_500_unconditional",
]
BASELINES = ("nomadtools", "per_runner", "unconditional")
MANAGER_TOKEN = "ghp_bench_manager_token"
BASELINE_TOKENS = {name: f"ghp_bench_{name}_token" for name in BASELINES}
PREFIX = "bench"


def default_intervals() -> tuple[float, float]:
    """``reconcile_interval`` and ``github.poll_interval`` as the default config has them."""
    from github_runner_manager.config import GitHubConfig, ManagerConfig

    reconcile = float(ManagerConfig.model_fields["reconcile_interval"].default)
    poll = float(GitHubConfig.model_fields["poll_interval"].default)
    return reconcile, poll


def _delta(after: dict[str, Any], before: dict[str, Any]) -> tuple[int, int]:
    return (
        int(after["requests"]) - int(before["requests"]),
        int(after["rate_limit_units"]) - int(before["rate_limit_units"]),
    )


def measure_fleet(ctx: Context, redis: Any, n: int, cycles: int, jobs: int) -> dict[str, Any]:
    """One fleet size: set up, measure this project, then each baseline; returns the raw numbers."""
    reconcile_interval, poll_interval = default_intervals()
    orgs, repos = fleet_world()
    tokens = [MANAGER_TOKEN, *BASELINE_TOKENS.values()]
    # Limits off while measuring: the counts, not GitHub's budget, are the figure (said in BENCHMARKS.md).
    emu = start_emulator(orgs=orgs, repos=repos, tokens=tokens, secondary_limit=0, rate_limit=10**9)
    redis.flush()
    out: dict[str, Any] = {"runners": n, "repos": len(repos), "orgs": len(orgs)}
    try:
        work = ctx.tmp / f"api-{n}"
        token_file = write_secret(work / "token", MANAGER_TOKEN)
        config = manager_config(
            github_url=emu.url,
            token_file=token_file,
            redis_url=redis.url,
            paths=orgs,
            state_dir=work / "state",
            group={
                "name": "pool", "labels": ["self-hosted", "linux", "x64"], "backend": "fake",
                "min_idle": n, "max_runners": n, "paths": orgs,
            },
            backends={"fake": {"mode": "memory"}},
            prefix=PREFIX,
            unit="bench-api",
        )  # fmt: skip
        manager = in_process_manager(config)
        try:
            started = time.monotonic()
            for _ in range(5):
                manager.reconcile()
                if manager.store.counts().get("pool", {}).get("idle", 0) >= n:
                    break
            out["setup_s"] = time.monotonic() - started
            make_runners_online(emu, f"{PREFIX}-")
            wait_for(lambda: len(emu.state.runners) >= n, 30, f"{n} runners at the emulator")
            # one cycle to fill the ETag cache (the service has run for a while at steady state); the
            # baselines send no conditional requests, so a warm-up would change nothing for them
            manager.reconcile()
            manager.poll_queued_jobs()
            units_before = emulator_units(emu).get(token_key(MANAGER_TOKEN), 0)
            rec_req = rec_units = poll_req = poll_units = 0
            rec_seconds: list[float] = []
            poll_seconds: list[float] = []
            for _ in range(cycles):
                s0 = manager.github.stats()
                t0 = time.monotonic()
                manager.reconcile()
                rec_seconds.append(time.monotonic() - t0)
                s1 = manager.github.stats()
                t1 = time.monotonic()
                manager.poll_queued_jobs()
                poll_seconds.append(time.monotonic() - t1)
                s2 = manager.github.stats()
                req, units = _delta(s1, s0)
                rec_req, rec_units = rec_req + req, rec_units + units
                req, units = _delta(s2, s1)
                poll_req, poll_units = poll_req + req, poll_units + units
            emu_units = emulator_units(emu).get(token_key(MANAGER_TOKEN), 0) - units_before
            ours = {
                "units_per_reconcile": rec_units / cycles,
                "requests_per_reconcile": rec_req / cycles,
                "units_per_poll": poll_units / cycles,
                "requests_per_poll": poll_req / cycles,
                "emulator_units": emu_units,
                "client_units": rec_units + poll_units,
                "reconcile_s_median": sorted(rec_seconds)[len(rec_seconds) // 2],
                "poll_s_median": sorted(poll_seconds)[len(poll_seconds) // 2],
            }
            ours["units_per_hour"] = (
                ours["units_per_reconcile"] * 3600 / reconcile_interval
                + ours["units_per_poll"] * 3600 / poll_interval
            )
            ours["requests_per_hour"] = (
                ours["requests_per_reconcile"] * 3600 / reconcile_interval
                + ours["requests_per_poll"] * 3600 / poll_interval
            )
            if jobs:
                steady = ours["requests_per_reconcile"] + ours["requests_per_poll"]
                ours.update(per_job(emu, manager, repos, jobs, steady))
            out["ours"] = ours
        finally:
            manager.close()

        runner_ids = [
            (r.scope, r.id)
            for r in list(emu.state.runners.values())
            if r.name.startswith(f"{PREFIX}-")
        ]
        out["baselines"] = {}
        for name in BASELINES:
            client = CountingClient(emu.url, BASELINE_TOKENS[name], conditional=False)
            baseline: Baseline
            if name == "nomadtools":
                baseline = NomadtoolsBaseline(client, orgs)
                baseline.prepare(repos[0])
            elif name == "per_runner":
                baseline = PerRunnerBaseline(client, runner_ids)
            else:
                baseline = ListAllBaseline(client, orgs)
            try:
                before = client.stats.snapshot()
                emu_before = emulator_units(emu).get(token_key(BASELINE_TOKENS[name]), 0)
                t0 = time.monotonic()
                for _ in range(cycles):
                    baseline.cycle()
                elapsed = time.monotonic() - t0
                after = client.stats.snapshot()
                req, units = _delta(after, before)
                out["baselines"][name] = {
                    "description": baseline.description,
                    "units_per_cycle": units / cycles,
                    "requests_per_cycle": req / cycles,
                    "units_per_hour": units / cycles * 3600 / reconcile_interval,
                    "requests_per_hour": req / cycles * 3600 / reconcile_interval,
                    "emulator_units": emulator_units(emu).get(token_key(BASELINE_TOKENS[name]), 0)
                    - emu_before,
                    "client_units": units,
                    "cycle_s": elapsed / cycles,
                    "notes": baseline.notes,
                }
            finally:
                baseline.close()
    finally:
        emu.stop()
    return out


def _ops_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, int]]:
    out = {}
    for op, counts in after.get("by_operation", {}).items():
        prev = before.get("by_operation", {}).get(op, {})
        diff = {
            k: int(counts.get(k, 0)) - int(prev.get(k, 0)) for k in ("requests", "rate_limit_units")
        }
        if any(diff.values()):
            out[op] = diff
    return out


def per_job(
    emu: Any, manager: Any, repos: list[str], jobs: int, steady_requests: float
) -> dict[str, Any]:
    """Marginal cost of jobs: queue ``jobs`` (taken and finished by the simulated runners), then run
    reconcile + poll cycles until the fleet is back at steady state. Units and requests per job are what
    those cycles spent beyond steady state (``steady_requests`` per cycle, all 304s)."""
    before = manager.github.stats()
    ids = [
        emu.control.queue_job(repos[i % len(repos)], ["self-hosted"], ["true"]) for i in range(jobs)
    ]
    wait_for(
        lambda: all(emu.state.jobs[j].status == "completed" for j in ids),
        60,
        f"{jobs} jobs to complete",
    )
    cycles = 0
    for cycles in range(1, 8):  # the count is reported
        s0 = manager.github.stats()
        manager.reconcile()
        make_runners_online(emu, f"{PREFIX}-")
        manager.poll_queued_jobs()
        if cycles >= 2 and _delta(manager.github.stats(), s0)[1] == 0:
            break
    after = manager.github.stats()
    req, units = _delta(after, before)
    return {
        "jobs": jobs,
        "units_per_job": units / jobs,
        "requests_per_job": max(0.0, req - cycles * steady_requests) / jobs,
        "cycles_to_steady": cycles,
        "job_operations": _ops_delta(after, before),
    }


def run(ctx: Context) -> Figures:
    figures = Figures()
    sizes = (50,) if ctx.quick else (50, 500, 1000)
    cycles = 1 if ctx.quick else 5
    reconcile_interval, poll_interval = default_intervals()
    redis = start_redis(ctx.tmp / "redis-api")
    try:
        raw: dict[str, Any] = {}
        for n in sizes:
            ctx.log(f"api: fleet of {n} runners over 50 repositories in 2 orgs")
            jobs = 25 if n == 500 else 0
            raw[str(n)] = measure_fleet(ctx, redis, n, cycles, jobs=jobs)
    finally:
        redis.stop()
    figures.details["api"] = {
        "reconcile_interval_s": reconcile_interval,
        "poll_interval_s": poll_interval,
        "cycles_measured": cycles,
        "fleets": raw,
    }
    for n_text, data in raw.items():
        ours = data["ours"]
        n = int(n_text)
        figures.set(f"api_units_per_reconcile_{n}", ours["units_per_reconcile"])
        figures.set(f"api_requests_per_reconcile_{n}", ours["requests_per_reconcile"])
        figures.set(f"api_units_per_poll_{n}", ours["units_per_poll"])
        figures.set(f"api_requests_per_poll_{n}", ours["requests_per_poll"])
        figures.set(f"api_units_per_hour_{n}", ours["units_per_hour"])
        figures.set(f"api_requests_per_hour_{n}", ours["requests_per_hour"])
        if "units_per_job" in ours:
            figures.set(f"api_units_per_job_{n}", ours["units_per_job"])
            figures.set(f"api_requests_per_job_{n}", ours["requests_per_job"])
        for name, base in data["baselines"].items():
            figures.set(f"api_units_per_hour_{n}_{name}", base["units_per_hour"])
            figures.set(f"api_requests_per_hour_{n}_{name}", base["requests_per_hour"])
            # ratio to this project; this project's units are floored at 1 per hour (it may spend none)
            figures.set(
                f"api_units_ratio_{n}_{name}",
                base["units_per_hour"] / max(ours["units_per_hour"], 1.0),
            )
            figures.set(
                f"api_requests_ratio_{n}_{name}",
                base["requests_per_hour"] / max(ours["requests_per_hour"], 1.0),
            )
    if ctx.quick:
        for n in (500, 1000):
            figures.null(
                [
                    f"api_units_per_hour_{n}{s}"
                    for s in ("", "_nomadtools", "_per_runner", "_unconditional")
                ],
                "skipped in quick mode (a fleet of 50 runners only)",
            )
    return figures
