"""Campaign 7 -- multi-unit: three managers on one Redis under a shared ``max_total_runners``.

Each unit wants an idle runner and all receive every webhook; a burst of jobs asks for far more runners
than the fleet cap allows. A sampler reads GitHub's runner list and every unit's backend instances every
50 ms for the whole run: neither ever exceeds the cap. Every job completes once, with ``success``, on a
runner of its own (no job served twice, no runner serving two jobs); the emulator's job records say so.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from github_emulator import token_key
from tests.reliability.harness import (
    TIMEOUT,
    TOKEN,
    Fleet,
    Sampler,
    form,
    no_traceback,
    producer,
    report,
    rng,
    settle,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

CAP = 4


def test_three_units_never_exceed_the_shared_cap(fleet: Fleet) -> None:
    jobs_wanted = form(15, 60)
    groups = [
        {
            "name": "small",
            "labels": ["small"],
            "backend": "fake",
            "min_idle": 1,
            "max_runners": 10,
            "cpu": 1,
            "memory": "1GiB",
            "paths": ["acme"],
        }
    ]
    for unit in ("u0", "u1", "u2"):
        fleet.add(
            unit, runner_groups=groups, max_total_runners=CAP, fake={"create_latency": "0.2s"}
        )
    durations = rng("multi-unit-durations")
    lengths = [round(durations.uniform(0.3, 1.5), 2) for _ in range(jobs_wanted)]
    started = time.monotonic()
    with Sampler(fleet, cap=CAP) as sampler:
        fleet.start()
        with producer(
            fleet,
            rng("multi-unit-gaps"),
            gap=(0.0, 0.4),
            limit=jobs_wanted,
            steps=lambda n: [f"sleep {lengths[n]}", "echo ok"],
        ) as ids:
            while len(ids) < jobs_wanted and time.monotonic() - started < 120:
                time.sleep(0.1)
        done = fleet.wait_jobs_done(ids, 240)
    problems: list[str] = list(sampler.over[:10])
    failed = {j: d["conclusion"] for j, d in done.items() if d["conclusion"] != "success"}
    if failed:
        problems.append(f"jobs not successful: {failed}")
    runners = Counter(d["runner_name"] for d in done.values())
    twice = {name: n for name, n in runners.items() if n > 1}
    if twice:
        problems.append(f"runners that served more than one job: {twice}")
    if len(done) != len(ids):
        problems.append(f"{len(ids)} jobs queued, {len(done)} completed")
    if sampler.samples < 50:
        problems.append(f"only {sampler.samples} samples")
    if sampler.github_max < CAP:
        problems.append(
            f"the fleet never reached its cap ({sampler.github_max} < {CAP}): a weak test"
        )
    log = fleet.emulator.control.stats()["request_log"]
    jit = sum(
        1
        for e in log
        if e["token"] == token_key(TOKEN)
        and "generate-jitconfig" in e["path"]
        and e["status"] == 201
    )
    for manager in fleet.managers:
        problems += [f"{manager.unit} log: {line}" for line in no_traceback(manager.log_text())]
    report(
        "multi-unit",
        {
            "form": "full" if jobs_wanted > 15 else "short",
            "units": 3,
            "cap": CAP,
            "jobs": len(ids),
            "samples": sampler.samples,
            "max_github_runners": sampler.github_max,
            "max_instances": sampler.instance_max,
            "max_records": sampler.record_max,
            "over_cap_samples": len(sampler.over),
            "runners_registered": jit,
            "jobs_failed": len(failed),
            "seconds": round(time.monotonic() - started, 1),
            "problems": len(problems),
        },
    )
    settle(problems, fleet.tails())
