"""Issue 5 acceptance, end to end: the manager with the LXD backend serves jobs in real containers.

Real parts only: LXD with the project's runner image (``runner_image``), a real redis-server, the GitHub
emulator listening on the LXD bridge address (containers reach the host there; ``agent_host`` makes
the JIT configs point at it), and a ``RunnerManager`` service whose webhook listener on loopback gets
the emulator's signed ``workflow_job`` deliveries.

What is shown: ``min_idle: 2`` keeps two idle containers (seen in LXD and on GitHub, before the jobs and
again after them); 10 jobs over two label sets all complete; each job's steps run inside its runner's
container (a step prints ``hostname``, equal to the runner name GitHub reports for the job, and a file
only the image has); afterwards no container, no GitHub runner and no Redis record remains.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from github_runner_manager.config import parse_config
from github_runner_manager.manager import RunnerManager
from github_runner_manager.service import ManagerService
from tests.functional.lxd.lxdtools import LXDInfo, RunnerImage, lxc
from tests.parts import free_port, wait_for

ORG = "acme"
REPOS = ("acme/app", "acme/lib")
JOBS = 10
GROUPS = {
    "small": {"label": "small", "min_idle": 2, "max_runners": 5},
    "large": {"label": "large", "min_idle": 0, "max_runners": 5},
}
STEPS = [
    {"name": "hostname", "command": "hostname"},
    {"name": "image", "command": "cat /etc/github-runner/image-info"},
    {"name": "kernel", "command": "uname -a"},
]


@dataclass
class Fleet:
    """The running system under test."""

    prefix: str
    emulator: Any
    manager: RunnerManager
    stop: threading.Event
    thread: threading.Thread

    def containers(self, group: str | None = None) -> dict[str, str]:
        """This fleet's LXD containers (name -> status), from LXD itself."""
        listed = json.loads(lxc("list", "--format", "json", timeout=60).stdout)
        start = f"{self.prefix}-{group}-" if group else f"{self.prefix}-"
        return {i["name"]: i["status"] for i in listed if i["name"].startswith(start)}

    def github_runners(self, group: str | None = None) -> list[dict[str, Any]]:
        start = f"{self.prefix}-{group}-" if group else f"{self.prefix}-"
        return [r for r in self.emulator.control.runners() if r["name"].startswith(start)]

    def idle_pool(self, group: str) -> set[str]:
        """Runners GitHub sees online and idle whose container runs (and no other container of the group)."""
        idle = {
            r["name"]
            for r in self.github_runners(group)
            if r["status"] == "online" and not r["busy"] and not r.get("job_id")
        }
        running = {n for n, s in self.containers(group).items() if s == "Running"}
        return idle if idle == running else set()

    def redis_keys(self) -> list[str]:
        client = self.manager.store.client
        return [str(k) for k in client.scan_iter(match=f"{self.manager.store.key_prefix}:runner:*")]


@pytest.fixture
def fleet(lxd: LXDInfo, runner_image: RunnerImage, redis_url: str) -> Iterator[Fleet]:
    from github_emulator.testing import start_emulator

    prefix = f"e2e{secrets.token_hex(2)}"
    token = f"ghp_e2e{secrets.token_hex(12)}"
    secret = secrets.token_hex(16)
    webhook_port = free_port()
    emulator = start_emulator(
        host=lxd.address, port=0, agent_host=lxd.address, orgs=[ORG], repos=list(REPOS),
        tokens=[token],
        hooks=[{"url": f"http://127.0.0.1:{webhook_port}/webhook", "secret": secret, "org": ORG}],
    )  # fmt: skip
    groups = [
        {"name": name, "labels": ["self-hosted", "linux", "x64", g["label"]], "backend": "lxd",
         "image": runner_image.alias, "min_idle": g["min_idle"], "max_runners": g["max_runners"],
         "cpu": 1, "memory": "1GiB", "disk": "4GiB"}
        for name, g in GROUPS.items()
    ]  # fmt: skip
    config = parse_config(
        {
            "github": {"url": emulator.url, "token": token, "paths": [ORG], "poll_interval": "10s"},
            "webhook": {"listen": f"127.0.0.1:{webhook_port}", "secret": secret},
            "redis": {"url": redis_url, "key_prefix": f"ghrm-{prefix}"},
            "reconcile_interval": "5s",
            "register_timeout": "180s",
            "offline_timeout": "60s",
            "concurrency": 10,
            "prefix": prefix,
            "unit": "e2e",
            "state_dir": "/tmp/ghrm-e2e-state-unused",
            "metrics_listen": None,
            "runner_groups": groups,
            "backends": {"lxd": {}},
        }
    )
    manager = RunnerManager(config)
    manager.validate()  # the image alias exists, the profile is not privileged
    stop = threading.Event()
    service = ManagerService(manager, sweep_interval=1.0, shutdown_grace=15.0)
    thread = threading.Thread(target=service.run, args=(stop,), name="e2e-service", daemon=True)
    thread.start()
    running = Fleet(prefix, emulator, manager, stop, thread)
    try:
        yield running
    finally:
        stop.set()
        thread.join(timeout=60)
        # a safety net only: the test itself flushes and checks that nothing is left
        for name in running.containers():
            lxc("delete", "--force", name, check=False, timeout=120)
        manager.close()
        emulator.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lxd_fleet_serves_jobs_in_containers_and_leaves_nothing(
    fleet: Fleet, runner_image: RunnerImage
) -> None:
    started = time.monotonic()
    control = fleet.emulator.control

    # min_idle: 2 -- two idle containers, online on GitHub, and no more
    pool = wait_for(lambda: len(fleet.idle_pool("small")) == 2 and fleet.idle_pool("small"),
                    timeout=180, interval=1.0, what="two idle small containers")  # fmt: skip
    warm = set(pool)  # type: ignore[call-overload]
    phases = {"warm pool": time.monotonic() - started}
    assert not fleet.containers("large"), "a group with min_idle 0 keeps no container"

    # 10 jobs over two label sets
    jobs: dict[int, str] = {}
    for index in range(JOBS):
        group = list(GROUPS)[index % 2]
        labels = ["self-hosted", "linux", "x64", GROUPS[group]["label"]]
        job_id = control.queue_job(REPOS[index % 2], labels, STEPS, name=f"e2e-{index}")
        jobs[job_id] = group

    def all_completed() -> bool:
        return all(control.get_job(j)["status"] == "completed" for j in jobs)

    wait_for(all_completed, timeout=300, interval=1.0, what=f"{JOBS} jobs to complete")
    phases["jobs"] = time.monotonic() - started - sum(phases.values())
    runners_used = set()
    for job_id, group in jobs.items():
        job = control.get_job(job_id)
        assert job["conclusion"] == "success", job
        runner = job["runner_name"]
        assert runner.startswith(f"{fleet.prefix}-{group}-"), (job_id, runner)
        outputs = {s["name"]: (s["output"] or "").strip() for s in job["steps"]}
        # the step ran inside the runner's container: LXD names the container's host after it
        assert outputs["hostname"] == runner, (job_id, outputs)
        assert f"CACHE_KEY={runner_image.cache_key}" in outputs["image"]
        runners_used.add(runner)
    assert len(runners_used) == JOBS, "ephemeral runners: one job each"
    assert warm & runners_used, "the warm pool served jobs"

    # the pool refills to exactly two idle containers, all fresh
    refilled = wait_for(lambda: len(fleet.idle_pool("small")) == 2 and fleet.idle_pool("small"),
                        timeout=180, interval=1.0, what="the small pool to refill")  # fmt: skip
    assert not set(refilled) & runners_used  # type: ignore[call-overload]
    phases["refill"] = time.monotonic() - started - sum(phases.values())

    # stop serving, flush everything: nothing is left anywhere
    fleet.stop.set()
    fleet.thread.join(timeout=60)

    def nothing_left() -> bool:
        fleet.manager.flush(flush_busy=True)
        return not fleet.containers() and not fleet.github_runners() and not fleet.redis_keys()

    wait_for(nothing_left, timeout=120, interval=1.0, what="no container, GitHub runner or record")
    assert fleet.manager.store.list_runners() == []
    phases["clean-up"] = time.monotonic() - started - sum(phases.values())
    print("lxd e2e: " + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items()))
