"""End to end: two `github-runner-manager run` processes, one Redis, the emulator, the fake backend in local mode.

Jobs arrive by signed webhooks (each org hooked to both managers, so every event reaches both and the
job queue's deduplication decides); runners are real local processes running the emulator's runner app,
which really runs each job's steps. Also here: the manager's job intake decisions (sizing, unmatched,
refused) and ``statistics()`` against real Redis and the emulator, in process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from tests.parts import free_port, wait_for

from github_runner_manager.config import parse_config
from github_runner_manager.manager import RunnerManager

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "ghp_e2e_token_0123456789"
SECRET = "e2e-webhook-secret"
ORGS = ("acme", "beta")
REPOS = ("acme/app", "acme/lib", "acme/web", "beta/api", "beta/db")
CAPS = {"small": 4, "large": 3}


# ------------------------------------------------------------------------------ shared helpers
@dataclass
class ManagerProcess:
    """A `github-runner-manager run` subprocess and where it writes."""

    unit: str
    config: Path
    log: Path
    webhook_port: int
    state_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/webhook"

    def start(self, wait: bool = True) -> ManagerProcess:
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "github_runner_manager.cli", "--config", str(self.config),
             "--log-level", "info", "run"],
            stdout=log, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True,
        )  # fmt: skip
        log.close()
        if wait:
            wait_for(self.ready, 60, what=f"manager {self.unit} webhook endpoint")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"manager {self.unit} exited {self.process.returncode}:\n{self.tail()}"
            )
        resp = requests.get(f"http://127.0.0.1:{self.webhook_port}/healthz", timeout=2)
        return resp.status_code == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("GITHUB_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    config: Path | None, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI once and capture its output."""
    cmd = [sys.executable, "-m", "github_runner_manager.cli"]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, env=cli_env(), check=False
    )


def manager_config(
    tmp: Path,
    unit: str,
    emulator_url: str,
    redis_url: str,
    *,
    groups: list[dict[str, Any]] | None = None,
    fake: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The config mapping of one manager unit (its own webhook port, state dir and fake state file)."""
    default_groups = [
        {"name": "small", "labels": ["small"], "backend": "fake", "min_idle": 1,
         "max_runners": CAPS["small"], "cpu": 1, "memory": "1GiB", "paths": list(ORGS),
         "sizing": {"max_memory": "4GiB"}},
        {"name": "large", "labels": ["large"], "backend": "fake", "min_idle": 0,
         "max_runners": CAPS["large"], "cpu": 2, "memory": "2GiB", "paths": list(ORGS),
         "sizing": {"max_cpu": 4, "max_memory": "8GiB"}},
    ]  # fmt: skip
    data: dict[str, Any] = {
        "github": {"url": emulator_url, "token": TOKEN, "paths": list(ORGS), "poll_interval": "5s"},
        "webhook": {"listen": f"127.0.0.1:{free_port()}", "path": "/webhook", "secret": SECRET},
        "redis": {"url": redis_url, "key_prefix": "ghrm"},
        "reconcile_interval": "3s",
        "register_timeout": "60s",
        "offline_timeout": "60s",
        "concurrency": 8,
        "prefix": "ghr",
        "unit": unit,
        "state_dir": str(tmp / unit / "state"),
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "runner_groups": groups or default_groups,
        "backends": {
            "fake": {
                "mode": "local",
                "state_file": str(tmp / unit / "fake.json"),
                "work_dir": str(tmp / unit / "work"),
                "create_latency": "0.2s",
                **(fake or {}),
            }
        },
    }
    data.update(overrides)
    return data


def write_manager(tmp: Path, data: dict[str, Any]) -> ManagerProcess:
    unit = data["unit"]
    (tmp / unit).mkdir(parents=True, exist_ok=True)
    path = tmp / unit / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    port = int(data["webhook"]["listen"].rpartition(":")[2]) if data.get("webhook") else 0
    return ManagerProcess(
        unit=unit, config=path, log=tmp / unit / "manager.log", webhook_port=port,
        state_file=Path(data["backends"]["fake"]["state_file"]),
    )  # fmt: skip


def instances(state_file: Path) -> dict[str, dict[str, Any]]:
    """The fake backend's instances as its state file holds them."""
    try:
        return dict(json.loads(state_file.read_text() or "{}"))
    except FileNotFoundError:
        return {}


def our_github_runners(emulator: Any, prefix: str = "ghr-") -> list[dict[str, Any]]:
    return [r for r in emulator.control.runners() if r["name"].startswith(prefix)]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def setup_world(emulator: Any) -> None:
    control = emulator.control
    for org in ORGS:
        control.add_org(org)
    for repo in REPOS:
        owner, name = repo.split("/")
        control.add_repo(owner, name)
    control.add_token(TOKEN, orgs=ORGS, repos=REPOS)


@dataclass
class CapSampler:
    """Samples GitHub runners and backend instances per group in a thread; keeps the maxima."""

    emulator: Any
    state_files: list[Path]
    interval: float = 0.05
    github_max: Counter[str] = field(default_factory=Counter)
    instance_max: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CapSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @staticmethod
    def _group(name: str) -> str:
        return name.split("-")[1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.emulator.state.lock:
                    names = [r.name for r in self.emulator.state.runners.values()]
                gh = Counter(self._group(n) for n in names if n.startswith("ghr-"))
                inst: Counter[str] = Counter()
                for state_file in self.state_files:
                    inst.update(self._group(n) for n in instances(state_file))
            except (OSError, ValueError) as exc:  # a state file read mid-replace; sample again
                self.errors.append(repr(exc))
                continue
            for group, n in gh.items():
                self.github_max[group] = max(self.github_max[group], n)
            for group, n in inst.items():
                self.instance_max[group] = max(self.instance_max[group], n)
            self.samples += 1


# ------------------------------------------------------------------------------ the E2E test
JOB_MIX: list[tuple[list[str], str]] = [
    (["self-hosted", "small"], "small"),
    (["self-hosted", "linux", "large"], "large"),
    (["self-hosted", "small", "mem=2048"], "small"),
    (["self-hosted", "large", "cpu=4", "mem=6GiB"], "large"),
    (["small"], "small"),
]


@pytest.fixture
def world(emulator: Any) -> Iterator[Any]:
    setup_world(emulator)
    yield emulator


def test_two_managers_serve_30_jobs_within_caps(world: Any, redis_url: str, tmp_path: Path) -> None:
    emulator = world
    managers = [
        write_manager(tmp_path, manager_config(tmp_path, unit, emulator.url, redis_url))
        for unit in ("u0", "u1")
    ]
    for manager in managers:
        for org in ORGS:
            emulator.control.add_hook(manager.webhook_url, SECRET, org=org)
    sampler = CapSampler(emulator, [m.state_file for m in managers])
    try:
        for manager in managers:
            manager.start(wait=False)
        for manager in managers:
            wait_for(manager.ready, 60, what=f"manager {manager.unit} webhook endpoint")
        with sampler:
            job_ids = []
            for n in range(30):
                job_labels, _group = JOB_MIX[n % len(JOB_MIX)]
                repo = REPOS[n % len(REPOS)]
                steps = [f"echo job {n} on $RUNNER_NAME", "sleep 0.3"]
                job_ids.append(emulator.control.queue_job(repo, job_labels, steps))

            def all_done() -> bool:
                jobs = {j["id"]: j for j in emulator.control.jobs()}
                return all(jobs[j]["status"] == "completed" for j in job_ids)

            try:
                wait_for(all_done, 120, interval=0.25, what="all 30 jobs completed")
            except TimeoutError:
                jobs = {j["id"]: j for j in emulator.control.jobs()}
                left = {
                    j: (jobs[j]["status"], jobs[j]["labels"])
                    for j in job_ids
                    if jobs[j]["status"] != "completed"
                }
                raise AssertionError(
                    f"jobs not completed: {left}\n--- u0\n{managers[0].tail()}\n--- u1\n{managers[1].tail()}"
                ) from None
        jobs = {j["id"]: j for j in emulator.control.jobs()}
        assert all(jobs[j]["conclusion"] == "success" for j in job_ids), [jobs[j] for j in job_ids]
        # every job ran on one of our runners, each runner took one job (ephemeral)
        ran_on = [jobs[j]["runner_name"] for j in job_ids]
        assert all(name and name.startswith("ghr-") for name in ran_on)
        assert len(set(ran_on)) == len(ran_on)
        # sized jobs ran on runners of the right group carrying their tokens
        for n, job_id in enumerate(job_ids):
            expected_group = JOB_MIX[n % len(JOB_MIX)][1]
            assert jobs[job_id]["runner_name"].startswith(f"ghr-{expected_group}-"), jobs[job_id]
        assert sampler.samples > 20
        for group, cap in CAPS.items():
            assert sampler.github_max[group] <= cap, (group, sampler.github_max)
            assert sampler.instance_max[group] <= cap, (group, sampler.instance_max)
        assert sampler.github_max["small"] >= 2  # the fleet really scaled

        # statistics through the CLI: per-group counts, pickups and the GitHub calls spent
        status = run_cli(managers[0].config, "status", "--json")
        assert status.returncode == 0, status.stderr
        groups = json.loads(status.stdout)["groups"]
        assert set(groups) == {"small", "large"}
        assert groups["small"]["pickup_count"] + groups["large"]["pickup_count"] == 30
        assert groups["small"]["github_requests"] > 0

        # webhooks reached both managers; the job queue served each event once
        counters = _counters(redis_url)
        assert (
            counters.get("jobqueue_duplicate_job_event", 0)
            + counters.get("jobqueue_duplicate_delivery", 0)
            >= 30
        )
        assert counters.get("jobs_unmatched", 0) == 0
        # GitHub removes an ephemeral runner whose job succeeded: no DELETE answered 404 was sent
        # for the 30 husks (each would have cost a rate-limit unit)
        log = emulator.control.stats()["request_log"]
        deletes = [e for e in log if e["method"] == "DELETE" and "/actions/runners/" in e["path"]]
        assert [e for e in deletes if e["status"] == 404] == [], deletes

        for manager in managers:
            assert manager.stop() == 0, manager.tail()
        assert "stopped" in managers[0].tail(5)
        flushes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "github_runner_manager.cli",
                    "--config",
                    str(m.config),
                    "flush",
                    "--busy",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env(),
            )
            for m in managers
        ]
        for flush in flushes:
            out, err = flush.communicate(timeout=120)
            assert flush.returncode == 0, err
            assert "removed" in out
        for manager in managers:
            assert instances(manager.state_file) == {}
        assert our_github_runners(emulator) == []
        assert _records(redis_url) == []
    finally:
        for manager in managers:
            if manager.process is not None and manager.process.poll() is None:
                manager.stop(signal.SIGKILL)
        for manager in managers:
            _kill_leftovers(manager.state_file)


def _counters(redis_url: str) -> dict[str, int]:
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    return {k: int(v) for k, v in client.hgetall("ghrm:counters").items()}


def _records(redis_url: str) -> list[str]:
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    return sorted(client.smembers("ghrm:runners"))


def _kill_leftovers(state_file: Path) -> None:
    """Never leave a runner process behind, whatever the test did."""
    for data in instances(state_file).values():
        pid = data.get("pid")
        if pid and pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


# ------------------------------------------------------------------- in-process intake decisions
@pytest.fixture
def manager(world: Any, redis_url: str, tmp_path: Path) -> Iterator[RunnerManager]:
    data = manager_config(tmp_path, "u0", world.url, redis_url, fake={"mode": "memory"})
    data["runner_groups"][0]["min_idle"] = 0
    mgr = RunnerManager(parse_config(data))
    yield mgr
    mgr.close()


def test_sized_job_gets_its_own_sized_runner(world: Any, manager: RunnerManager) -> None:
    labels = ["self-hosted", "large", "cpu=4", "mem=6GiB"]
    job_id = world.control.queue_job("beta/api", labels, ["true"])
    assert manager.job_queued(job_id, "beta/api", labels, time.time()) == "large"
    assert manager.wait_idle(30)
    [rec] = manager.store.list_runners()
    assert rec.group == "large" and rec.owner == "beta" and rec.job_id == job_id
    assert rec.extra["runson"] == "cpu=4 mem=6GiB"
    fake = manager.backend("fake")
    inst = fake.get(rec.name)
    spec = fake._records[rec.name]  # the fake keeps the size it was asked for
    assert (spec.cpu, spec.memory) == (4, 6 * 1024**3)
    assert inst.tags["ghrm-owner"] == "beta" and inst.tags["ghrm-unit"] == "u0"
    [gh] = our_github_runners(world)
    assert {"cpu=4", "mem=6GiB", "large", "self-hosted"} <= {lb["name"] for lb in gh["labels"]}
    # the same job again (poll and webhook both saw it) does not make a second runner
    manager.job_queued(job_id, "beta/api", labels, time.time(), source="poll")
    assert manager.wait_idle(30)
    assert len(manager.store.list_runners()) == 1
    assert manager.statistics()["large"].queued_jobs == 1
    # a reconcile keeps the runner committed to its pending job
    manager.reconcile()
    assert [r.name for r in manager.store.list_runners()] == [rec.name]


def test_unmatched_and_refused_jobs_are_counted_not_served(
    world: Any, manager: RunnerManager
) -> None:
    assert manager.job_queued(1001, "acme/app", ["self-hosted", "gpu"], time.time()) is None
    assert (
        manager.job_queued(1002, "acme/app", ["self-hosted", "large", "mem=64GiB"], time.time())
        is None
    )
    assert (
        manager.job_queued(1003, "acme/app", ["self-hosted", "large", "cpu=lots"], time.time())
        is None
    )
    counters = manager.store.counters()
    assert counters["jobs_unmatched"] == 1 and counters["jobs_refused"] == 2
    assert manager.metrics.value("ghrm_jobs_unmatched_total") == 1
    assert (
        manager.metrics.value("ghrm_jobs_refused_total", {"group": "large", "reason": "sizing"})
        == 2
    )
    assert manager.pending_jobs() == {}
    assert manager.store.list_runners() == []


def test_generic_jobs_use_the_idle_pool_first(world: Any, manager: RunnerManager) -> None:
    manager.reconcile(quantity=2)
    assert manager.wait_idle(30)

    def small() -> set[str]:
        return {r.name for r in manager.store.list_runners("small")}

    pool = small()
    assert len(pool) == 2  # one per owner (acme, beta): a job runs only on a runner of its owner
    manager.job_queued(2000, "acme/lib", ["self-hosted", "small"], time.time())
    manager.job_queued(2001, "beta/db", ["self-hosted", "small"], time.time())
    assert manager.wait_idle(30)
    assert small() == pool  # served from the pool
    manager.job_queued(2002, "acme/lib", ["self-hosted", "small"], time.time())
    assert manager.wait_idle(30)
    assert len(small()) == 3  # the third job needed a new runner at once
    stats = manager.statistics()["small"]
    assert stats.queued_jobs == 3 and stats.idle == 3 and stats.max_runners == CAPS["small"]
    assert stats.github_requests > 0
    text = manager.info()
    assert "small" in text and "GitHub calls spent" in text
    infos = {i.name: i for i in manager.get_github_info()}
    assert set(infos) == {r.name for r in manager.store.list_runners()}
    assert all(i.unit == "u0" and i.state == "idle" and i.backend == "fake" for i in infos.values())
    assert {i.owner for i in infos.values() if i.group == "small"} == {"acme", "beta"}


def test_schedule_build_runner_image_writes_a_cron_entry(
    world: Any, redis_url: str, tmp_path: Path
) -> None:
    data = manager_config(tmp_path, "u0", world.url, redis_url, fake={"mode": "memory"})
    config_path = tmp_path / "manager.yaml"
    config_path.write_text(yaml.safe_dump(data))
    mgr = RunnerManager(parse_config(data), config_path=config_path)
    try:
        cron = mgr.schedule_build_runner_image(
            6, path=tmp_path / "cron" / "ghr-image", log=tmp_path / "image.log"
        )
        text = cron.read_text()
        assert str(config_path) in text and "build-image" in text and TOKEN not in text
        assert mgr.schedule_build_runner_image(6, path=cron, log=tmp_path / "image.log") == cron
    finally:
        mgr.close()


def test_reconcile_returns_intended_minus_actual_and_flush_counts(
    world: Any, redis_url: str, tmp_path: Path
) -> None:
    mgr = RunnerManager(parse_config(manager_config(tmp_path, "u0", world.url, redis_url)))
    try:
        # quantity applies to each of the two groups
        assert mgr.reconcile(quantity=3) == 6
        wait_for(
            lambda: sum(r["status"] == "online" for r in our_github_runners(world)) == 6,
            30, what="6 runners online",
        )  # fmt: skip
        assert mgr.reconcile(quantity=3) == 0
        assert mgr.reconcile(quantity=1) == -4  # idle surplus goes, newest first
        assert len(mgr.store.list_runners()) == 2
        assert len(instances(tmp_path / "u0" / "fake.json")) == 2
        assert mgr.flush(flush_busy=False) == 2
        assert mgr.store.list_runners() == [] and our_github_runners(world) == []
        assert instances(tmp_path / "u0" / "fake.json") == {}
    finally:
        mgr.close()
        _kill_leftovers(tmp_path / "u0" / "fake.json")


def test_service_survives_a_redis_outage_and_rebuilds_an_emptied_redis(
    world: Any, redis_server: Any, redis_url: str, tmp_path: Path
) -> None:
    """Redis goes away (loops log and back off, nothing crashes) and comes back empty: the records
    are rebuilt from the backend and GitHub, no runner is duplicated or deleted."""
    data = manager_config(
        tmp_path,
        "u0",
        world.url,
        redis_url,
        fake={"mode": "memory"},
        reconcile_interval="1s",
        metrics_listen=None,
    )
    data.pop("webhook")
    data["runner_groups"][0]["min_idle"] = 2
    mgr = RunnerManager(parse_config(data))
    stop = threading.Event()
    service = threading.Thread(target=mgr.serve, args=(stop,), daemon=True)
    service.start()
    try:
        wait_for(lambda: len(mgr.store.list_runners("small")) == 2, 30, what="the min_idle pool")
        mgr.wait_idle(30)
        before = {r.name for r in mgr.store.list_runners()}
        redis_server.stop()
        wait_for(
            lambda: (mgr.metrics.value("ghrm_reconcile_total", {"result": "error"}) or 0) >= 1,
            30, what="a reconcile failing on the outage",
        )  # fmt: skip
        assert service.is_alive()
        redis_server.restart()  # an empty Redis: nothing was saved
        wait_for(
            lambda: {r.name for r in mgr.store.list_runners()} == before, 30, what="records rebuilt"
        )
        assert service.is_alive()
        assert {i.name for i in mgr.backend("fake").list()} == before
        assert {r["name"] for r in our_github_runners(world)} == before
        assert all(r.unit == "u0" and r.group == "small" for r in mgr.store.list_runners())
    finally:
        stop.set()
        service.join(30)
        mgr.close()
    assert not service.is_alive()


def test_records_of_a_gone_unit_stop_holding_cap_slots(world: Any, manager: RunnerManager) -> None:
    """A unit silent for long left a registered-but-offline runner and its record: both go."""
    from github_runner_manager.config import GitHubPath

    acme = GitHubPath.parse("acme")
    [name] = manager.store.reserve_runners(
        "small", "acme", ["ghr-small-gone01"], "u9", group_cap=4, total_cap=0, owner_cap=0
    )
    jit = manager.github.generate_jit_config(acme, name, ["small"])
    manager.store.update(name, github_id=jit.runner_id)
    alive = manager.store.reserve_runners(
        "small", "acme", ["ghr-small-live01"], "u8", group_cap=4, total_cap=0, owner_cap=0
    )
    client = manager.store.client
    client.hset("ghrm:units", mapping={"u9": repr(time.time() - 3600), "u8": repr(time.time())})
    manager.reconcile()
    names = {r.name for r in manager.store.list_runners()}
    assert name not in names and alive[0] in names  # a live unit's records are never touched
    assert all(r["name"] != name for r in our_github_runners(world))


def test_a_job_queued_while_reconcile_observes_gets_one_runner(
    world: Any, manager: RunnerManager
) -> None:
    """Job intake creates a runner while a reconcile is between reading the records and the pending
    jobs: the reconcile's plan sees the job but not its runner, and must not create a second one."""
    fault = world.control.fault(
        route="actions/list-self-hosted-runners-for-org", latency=2.0, count=1
    )

    def listing_in_progress() -> bool:
        faults = requests.get(f"{world.url}/_emulator/faults", timeout=5).json()
        return any(f["id"] == fault["id"] and f["hits"] == 1 for f in faults)

    errors: list[BaseException] = []

    def reconcile() -> None:
        try:
            manager.reconcile()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=reconcile)
    thread.start()
    wait_for(listing_in_progress, 10, interval=0.02, what="the reconcile inside its GitHub listing")
    assert manager.store.list_runners() == []  # it has read the records: none
    assert manager.job_queued(3000, "acme/app", ["self-hosted", "small"], time.time()) == "small"
    assert len(manager.store.list_runners("small")) == 1  # intake made the job's runner at once
    thread.join(30)
    assert not thread.is_alive() and not errors, errors
    assert manager.wait_idle(30)
    runners = manager.store.list_runners("small")
    assert len(runners) == 1, [(r.name, r.state, r.created_at) for r in runners]
    assert manager.pending_jobs().keys() == {3000}
