"""Fallback between backends: the group's first backend is out of quota, runners land on the second.

The group lists ``backends: [openstack, fake]``. OpenStack is the Keystone + Nova emulator of
``tests/emulators`` reached through openstacksdk, with a quota of 0 servers: every ``POST /servers``
answers 403 "Quota exceeded", which the backend reports as a capacity error. The manager must then
create the runner on ``fake`` in ``local`` mode, where each instance is a real process running the
emulator's runner app, so the queued jobs really run and complete. The choice shows in ``status``
(the CLI's ``status --json``: runners by backend, capacity refusals by backend) and in the metrics
(backend errors by class, creates by backend). Everything is on loopback; Redis is a real server.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.functional.manager.test_manager_e2e import (
    SECRET,
    TOKEN,
    _kill_leftovers,
    instances,
    run_cli,
    setup_world,
)
from tests.parts import free_port, wait_for

from github_runner_manager.config import parse_config
from github_runner_manager.manager import RunnerManager

pytestmark = [
    pytest.mark.needs_redis,
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),  # openstacksdk's own
]

LABEL = "fallback"
JOBS = 3


@pytest.fixture
def full_cloud() -> Iterator[Any]:
    """An OpenStack cloud (emulated) that has no quota left: every server create is refused."""
    from tests.emulators.openstack import start_openstack_emulator

    cloud = start_openstack_emulator()
    cloud.quota = 0
    try:
        yield cloud
    finally:
        cloud.stop()


def fallback_config(
    tmp: Path, emulator_url: str, redis_url: str, cloud: Any, prefix: str
) -> dict[str, Any]:
    return {
        "github": {"url": emulator_url, "token": TOKEN, "paths": ["acme"], "poll_interval": "2s"},
        "webhook": {"listen": f"127.0.0.1:{free_port()}", "path": "/webhook", "secret": SECRET},
        "redis": {"url": redis_url, "key_prefix": "ghrm"},
        "reconcile_interval": "2s",
        "register_timeout": "60s",
        "offline_timeout": "60s",
        "concurrency": 8,
        "prefix": prefix,
        "unit": "u0",
        "state_dir": str(tmp / "state"),
        "metrics_listen": None,
        "runner_groups": [
            {
                "name": "fb",
                "labels": [LABEL],
                "backends": ["openstack", "fake"],
                "min_idle": 1,
                "max_runners": JOBS + 1,
                "cpu": 1,
                "memory": "1GiB",
                "disk": "10GiB",
            },
        ],
        "backends": {
            "openstack": {
                "auth_url": cloud.auth_url,
                "username": "runner",
                "password": "secret",
                "project_name": "runners",
                "region_name": "RegionOne",
                "network": "runners",
            },
            "fake": {
                "mode": "local",
                "state_file": str(tmp / "fake.json"),
                "work_dir": str(tmp / "work"),
            },
        },
    }


def test_first_backend_out_of_quota_runners_on_second_and_jobs_complete(
    emulator: Any, redis_url: str, full_cloud: Any, tmp_path: Path
) -> None:
    setup_world(emulator)
    prefix = "fb" + secrets.token_hex(2)
    data = fallback_config(tmp_path, emulator.url, redis_url, full_cloud, prefix)
    config_file = tmp_path / "manager.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = parse_config(data)
    assert config.runner_groups[0].backend_order == ["openstack", "fake"]
    emulator.control.add_hook(f"http://{data['webhook']['listen']}/webhook", SECRET, org="acme")
    state_file = tmp_path / "fake.json"
    manager = RunnerManager(config)
    stop = threading.Event()
    service = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    try:
        service.start()
        wait_for(
            lambda: any(r["status"] == "online" for r in _ours(emulator, prefix)),
            60, interval=0.2, what="the pool runner online",
        )  # fmt: skip
        job_ids = [
            emulator.control.queue_job(
                "acme/app", ["self-hosted", LABEL],
                [{"name": "where", "command": 'echo "$RUNNER_NAME $RUNNER_WORKDIR"'}],
            )
            for _ in range(JOBS)
        ]  # fmt: skip

        def finished() -> bool:
            return all(emulator.control.get_job(j)["status"] == "completed" for j in job_ids)

        try:
            wait_for(finished, 90, interval=0.25, what=f"{JOBS} jobs completed")
        except TimeoutError:
            jobs = [emulator.control.get_job(j) for j in job_ids]
            raise AssertionError(
                f"jobs not completed: {[(j['id'], j['status'], j['runner_name']) for j in jobs]}"
            ) from None
        jobs = [emulator.control.get_job(j) for j in job_ids]
        assert [j["conclusion"] for j in jobs] == ["success"] * JOBS, jobs
        assert len({j["runner_name"] for j in jobs}) == JOBS
        for job in jobs:
            # the job ran in a fake local instance: the runner's own work dir under the fake's
            name, workdir = job["steps"][0]["output"].split()
            assert name == job["runner_name"] and name.startswith(f"{prefix}-fb-")
            assert workdir == str(tmp_path / "work" / "instances" / name)
        # the pool is refilled (again on fake) once the job runners are gone
        wait_for(
            lambda: (
                not any(j["runner_name"] in instances(state_file) for j in jobs)
                and len(instances(state_file)) == 1
                and any(r["status"] == "online" for r in _ours(emulator, prefix))
            ),
            60, interval=0.25, what="the husks removed and the pool refilled",
        )  # fmt: skip
        stop.set()
        service.join(60)
        assert not service.is_alive()

        # at least: the first pool runner, one per job (less the one the pool served), the refill
        created = JOBS + 1
        # OpenStack was asked every time and refused every time; nothing was left there
        posts = [r for r in full_cloud.requests if r[0] == "POST" and "/servers" in r[1]]
        assert len(posts) >= created, full_cloud.requests
        assert full_cloud.servers == {}

        # status (in process and through the CLI): where runners are, and who refused how often
        stats = manager.statistics()["fb"]
        assert stats.backends == {"fake": 1}
        assert stats.backend_capacity_refusals["openstack"] >= created
        assert "fake 1" in manager.info() and "openstack" in manager.info()
        status = run_cli(config_file, "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)["groups"]["fb"]
        assert shown["backends"] == {"fake": 1}
        assert shown["backend_capacity_refusals"]["openstack"] == len(posts)

        # metrics: the refusals by backend and error class, the creates by backend
        metric = manager.metrics.value
        refused = metric(
            "ghrm_backend_errors_total",
            {"backend": "openstack", "operation": "create", "error": "CapacityError"},
        )
        assert refused == len(posts)
        assert metric("ghrm_backend_create_seconds_count", {"backend": "fake"}) == refused
        assert metric("ghrm_backend_create_seconds_count", {"backend": "openstack"}) is None
        assert 'ghrm_backend_errors_total{backend="openstack",error="CapacityError"' in (
            manager.metrics.text()
        )

        # flush leaves nothing anywhere
        manager.flush(flush_busy=True)
        assert instances(state_file) == {}
        assert _ours(emulator, prefix) == []
        assert manager.store.list_runners() == []
        assert full_cloud.servers == {}
    finally:
        stop.set()
        if service.is_alive():
            service.join(60)
        manager.close()
        _kill_leftovers(state_file)


def _ours(emulator: Any, prefix: str) -> list[dict[str, Any]]:
    return [r for r in emulator.control.runners() if r["name"].startswith(f"{prefix}-")]
