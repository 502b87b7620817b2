"""Job pickup latency: a job queued at the emulator → a runner has taken it (the emulator's ``queued_at``
and ``started_at`` of the job), p50 / p95 / max.

The manager runs as an operator runs it -- ``github-runner-manager --config FILE run`` in its own process,
with Redis, the webhook endpoint and the job consumers -- against the emulator in this process. Runners are
real processes: the Fake backend in ``local`` mode starts the emulator's runner application with the JIT
config, which connects, long-polls, runs the job's step and exits (ephemeral).

Scenarios (``pickup_<scenario>_{p50,p95,max}_s``):

* ``warm``: ``min_idle`` ≥ the jobs queued at once; each round queues ``min_idle`` jobs together, then waits
  for the pool to refill (reconcile every 5 s in the warm scenarios, so the rounds do not wait a minute;
  the cold ones use the config's default, 60 s).
* ``cold_fake_0_5`` / ``cold_fake_2``: ``min_idle`` 0, create latency 0.5 s / 2 s; one job at a time.
* ``..._poll``: the same with webhooks lost (no delivery reaches the manager): only the conditional poll
  (``github.poll_interval``, default 30 s) finds the jobs; right after one poll, jobs are queued at even
  offsets over one poll interval so the figures sample the whole wait.

``fake_launch_<latency>_s`` (median) and ``fake_launch_<latency>_p95_s`` are the instance start of the cold
target ("cold ≤ instance start + 2 s", compared percentile by percentile): the Fake backend's ``create``
with a fresh JIT config until that runner is online at the emulator, without the manager, one sample right
before each cold job so both see the same load.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench_support import (
    Context,
    Figures,
    ManagerProcess,
    free_port,
    manager_config,
    port_open,
    runner_tarball,
    start_emulator,
    start_redis,
    summary,
    wait_for,
    write_secret,
)

NAME = "pickup"
KEYS = ["pickup_warm_p95_s"]
ORG = "pickup-org"
REPO = f"{ORG}/app"
TOKEN = "ghp_bench_pickup_token"
SECRET = "bench-webhook-secret"
PREFIX = "bp"
GROUP = "bench"
LABELS = ["self-hosted", "linux", "x64", "bench"]
JOB_LABELS = ["self-hosted", "bench"]
#: reconcile interval of the pickup scenarios (refills the warm pool between rounds)
RECONCILE_INTERVAL = 5.0


@dataclass
class Scenario:
    """One pickup measurement."""

    name: str
    backend: str
    backend_settings: dict[str, Any]
    min_idle: int
    webhook: bool
    jobs: int
    poll_interval: float
    group_extra: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    #: None: the config's default (60 s); the warm scenarios use RECONCILE_INTERVAL to refill between rounds
    reconcile_interval: float | None = None
    start_timeout: float = 120.0
    job_timeout: float = 120.0


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: cold jobs taken by a runner that existed before they were queued (left out of the cold figures)
    not_cold: list[float] = field(default_factory=list)
    manager_pickup: dict[str, Any] = field(default_factory=dict)
    setup_s: float = 0.0


def _runners(emu: Any) -> list[Any]:
    with emu.state.lock:
        return [r for r in emu.state.runners.values() if r.name.startswith(f"{PREFIX}-")]


def idle_online(emu: Any) -> int:
    """Runners of ours the emulator would give a job to right now."""
    state = emu.state
    with state.lock:
        return sum(
            1
            for r in state.runners.values()
            if r.name.startswith(f"{PREFIX}-")
            and r.job_id is None
            and r.jobs_done == 0
            and state.is_online(r)
        )


def requests_of(emu: Any, operation_prefix: str) -> int:
    """Requests the emulator served for operations whose id starts with ``operation_prefix``."""
    stats = emu.emulator.stats
    with stats._lock:  # read-only
        return int(sum(v for k, v in stats.requests.items() if k.startswith(operation_prefix)))


def list_requests(emu: Any) -> int:
    return requests_of(emu, "actions/list-self-hosted-runners")


def run_scenario(
    ctx: Context,
    redis: Any,
    sc: Scenario,
    cleanup: Callable[[dict[str, Any]], None],
    probe: Callable[[], None] | None = None,
    quiet: Callable[[], bool] | None = None,
) -> Outcome:
    """Start an emulator and a manager process for ``sc``, queue its jobs, collect the latencies.

    ``probe`` (cold scenarios with webhooks) runs right before each job is queued: one instance-start
    sample (:class:`Launcher`), taken under the same machine load as the pickup that follows. ``quiet``
    (LXD) says no instance of ours exists any more: the probe and each cold job wait for it, so neither
    shares the disk with the deletion of the one before.
    """
    outcome = Outcome()
    emu = start_emulator(host=sc.host, orgs=[ORG], repos=[REPO], tokens=[TOKEN])
    redis.flush()
    work = ctx.tmp / f"pickup-{sc.name}-{uuid.uuid4().hex[:6]}"
    token_file = write_secret(work / "token", TOKEN)
    webhook = None
    if sc.webhook:
        port = free_port()
        secret_file = write_secret(work / "webhook-secret", SECRET)
        webhook = {"listen": f"127.0.0.1:{port}", "secret_file": str(secret_file)}
        emu.control.add_hook(f"http://127.0.0.1:{port}/webhook", SECRET, org=ORG)
    group = {
        "name": GROUP, "labels": LABELS, "backend": sc.backend, "min_idle": sc.min_idle,
        "max_runners": max(10, 2 * sc.min_idle), **sc.group_extra,
    }  # fmt: skip
    config = manager_config(
        github_url=emu.url,
        token_file=token_file,
        redis_url=redis.url,
        paths=[ORG],
        state_dir=work / "state",
        group=group,
        backends={sc.backend: sc.backend_settings},
        prefix=PREFIX,
        unit="bench-pickup",
        webhook=webhook,
        github={"poll_interval": sc.poll_interval},
        **({"reconcile_interval": sc.reconcile_interval} if sc.reconcile_interval else {}),
    )
    proc: ManagerProcess | None = None
    try:
        started = time.monotonic()
        proc = ManagerProcess(config, work / "manager")
        if webhook is not None:
            wait_for(
                lambda: proc.check() or port_open("127.0.0.1", port),
                60,
                "the manager's webhook endpoint",
            )
        if sc.min_idle:
            wait_for(
                lambda: proc.check() or idle_online(emu) >= sc.min_idle,
                sc.start_timeout,
                f"{sc.min_idle} idle runners online",
                interval=0.1,
            )
        else:
            wait_for(
                lambda: proc.check() or list_requests(emu) > 0, 60, "the manager's first reconcile"
            )
        outcome.setup_s = time.monotonic() - started

        def queue() -> int:
            return int(emu.control.queue_job(REPO, JOB_LABELS, ["true"]))

        def wait_started(job_ids: list[int], timeout: float) -> None:
            def started_all() -> bool:
                proc.check()
                return all(emu.state.jobs[j].started_at is not None for j in job_ids)

            try:
                wait_for(started_all, timeout, f"jobs {job_ids} to start", interval=0.05)
            except TimeoutError as exc:
                outcome.failures.append(str(exc))

        def collect(job_ids: list[int], before: set[int] | None = None) -> None:
            for job_id in job_ids:
                job = emu.state.jobs[job_id]
                if job.started_at is None:
                    continue
                latency = job.started_at - job.queued_at
                if before is not None and job.runner_id in before:
                    outcome.not_cold.append(latency)
                else:
                    outcome.latencies.append(latency)

        def spare() -> int:
            """Runners of ours that have not taken a job yet (idle, or registered and still starting)."""
            return sum(1 for r in _runners(emu) if r.job_id is None and r.jobs_done == 0)

        if sc.min_idle:
            burst = sc.min_idle
            for _round in range(math.ceil(sc.jobs / burst)):
                ids = [queue() for _ in range(burst)]
                wait_started(ids, sc.job_timeout)
                collect(ids)
                try:
                    wait_for(
                        lambda: proc.check() or idle_online(emu) >= sc.min_idle,
                        sc.start_timeout,
                        "the warm pool to refill",
                        interval=0.1,
                    )
                except TimeoutError as exc:
                    outcome.failures.append(str(exc))
                    break
        elif sc.webhook:
            for _ in range(sc.jobs):
                # a cold job finds no spare runner: wait out any surplus the last one left (reconcile removes it)
                try:
                    wait_for(
                        lambda: spare() == 0, 60, "no spare runner before a cold job", interval=0.1
                    )
                except TimeoutError as exc:
                    outcome.failures.append(str(exc))
                settle(quiet, outcome)
                if probe is not None:
                    probe()
                    settle(quiet, outcome)
                before = {r.id for r in _runners(emu)}
                ids = [queue()]
                wait_started(ids, sc.job_timeout)
                collect(ids, before)
        else:
            # poll only: right after a poll, jobs at even offsets over one poll interval, all waiting for the next
            polls = requests_of(emu, "actions/list-workflow-runs")
            wait_for(lambda: proc.check() or requests_of(emu, "actions/list-workflow-runs") > polls, 2 * sc.poll_interval + 30,
                     "a missed-webhook poll", interval=0.05)  # fmt: skip
            before = {r.id for r in _runners(emu)}
            ids = []
            t0 = time.monotonic()
            for i in range(sc.jobs):
                delay = t0 + i * sc.poll_interval / sc.jobs - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the schedule of the workload, not a wait for a condition
                ids.append(queue())
            wait_started(ids, sc.job_timeout + sc.poll_interval)
            collect(ids, before)
        try:
            from github_runner_manager.store import Store

            outcome.manager_pickup = Store(redis.url, key_prefix="ghrm").pickup_percentiles(GROUP)
        except Exception as exc:  # a cross-check only
            outcome.manager_pickup = {"error": str(exc)}
    finally:
        if proc is not None:
            proc.stop()
            if not proc.log_path.exists() or outcome.failures:
                outcome.failures.append(f"manager log tail: {proc.tail()}")
        try:
            cleanup(config)
        finally:
            emu.stop()
    return outcome


def settle(quiet: Callable[[], bool] | None, outcome: Outcome, timeout: float = 180.0) -> None:
    """Wait until ``quiet()`` (no instance of ours is left); a timeout is noted, not fatal."""
    if quiet is None:
        return
    try:
        wait_for(quiet, timeout, "no instance of ours left", interval=0.25)
    except TimeoutError as exc:
        outcome.failures.append(str(exc))


def fake_cleanup(config: dict[str, Any]) -> None:
    """Kill whatever runner processes the stopped manager left (the Fake backend's state file knows them)."""
    from github_runner_manager.backends.fake import FakeBackend

    backend = FakeBackend(config["backends"]["fake"], prefix=PREFIX)
    backend.remove_all(f"{PREFIX}-")


def fake_settings(ctx: Context, latency: float) -> dict[str, Any]:
    tarball = ctx.shared.get("runner_tarball")
    if tarball is None:
        tarball, _sha, _version = runner_tarball(ctx.tmp / "runner-app")
        ctx.shared["runner_tarball"] = tarball
    work = ctx.tmp / f"fake-{uuid.uuid4().hex[:6]}"
    return {
        "mode": "local",
        "create_latency": latency,
        "runner_tarball": str(tarball),
        "work_dir": str(work),
        "state_file": str(work / "instances.json"),
    }


class Launcher:
    """Instance start without the manager: ``create`` with a fresh JIT config → the runner is online.

    One sample per :meth:`once`, against an emulator of its own. The cold scenarios take one sample right
    before each job, so the instance start and the pickup it is compared with see the same machine load.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        backend_name: str,
        settings: dict[str, Any],
        host: str = "127.0.0.1",
        group_extra: dict[str, Any] | None = None,
        timeout: float = 120.0,
    ) -> None:
        from github_runner_manager.backends.registry import create_backend
        from github_runner_manager.config import GitHubPath, parse_config
        from github_runner_manager.github import GitHubClient

        self.backend_name = backend_name
        self.timeout = timeout
        self.created: list[float] = []
        self.online: list[float] = []
        self.failures: list[str] = []
        self.emu = start_emulator(host=host, orgs=[ORG], repos=[REPO], tokens=[TOKEN])
        self.backend = create_backend(backend_name, settings, prefix=PREFIX)
        self.github = GitHubClient(self.emu.url, TOKEN)
        work = ctx.tmp / f"launch-{uuid.uuid4().hex[:6]}"
        self.cfg = parse_config(
            manager_config(
                github_url=self.emu.url, token_file=write_secret(work / "token", TOKEN),
                redis_url="redis://127.0.0.1:1/0", paths=[ORG], state_dir=work / "state",
                group={"name": GROUP, "labels": LABELS, "backend": backend_name, **(group_extra or {})},
                backends={backend_name: settings}, prefix=PREFIX,
            )
        )  # fmt: skip
        self.group = self.cfg.runner_groups[0]
        self.path = GitHubPath.parse(ORG)

    def once(self) -> None:
        """One sample: register a JIT runner, create its instance, wait until it is online, delete it."""
        from github_runner_manager.backends.base import (
            TAG_GROUP,
            TAG_OWNER,
            TAG_PREFIX,
            TAG_UNIT,
            InstanceSpec,
        )
        from github_runner_manager.templates import build_context, render_user_data

        name = f"{PREFIX}-{GROUP}-l{uuid.uuid4().hex[:5]}"
        try:
            jit = self.github.generate_jit_config(self.path, name, LABELS)
            context = build_context(
                self.cfg, runner_name=name, group=self.group, path=self.path, jit_config=jit.encoded,
                labels=LABELS, info="benchmark launch", backend=self.backend_name,
            )  # fmt: skip
            spec = InstanceSpec(
                name=name, group=GROUP, image=self.group.image, cpu=self.group.cpu, memory=self.group.memory,
                disk=self.group.disk, user_data=render_user_data(context), jit_config=jit.encoded,
                tags={TAG_PREFIX: PREFIX, TAG_UNIT: "bench-launch", TAG_GROUP: GROUP, TAG_OWNER: ORG}, extra={},
            )  # fmt: skip
        except Exception as exc:  # reported with the figure
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            return
        t0 = time.monotonic()
        try:
            self.backend.create(spec)
            self.created.append(time.monotonic() - t0)

            def is_online() -> bool:
                runner = self.emu.state.runners.get(jit.runner_id)
                return runner is not None and runner.connected_at is not None

            wait_for(is_online, self.timeout, f"runner {name} online", interval=0.02)
            self.online.append(time.monotonic() - t0)
        except Exception as exc:  # reported with the figure
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
        finally:
            try:
                self.backend.delete(name)
            except Exception as exc:
                self.failures.append(f"delete {name}: {exc}"[:200])

    def result(self) -> dict[str, Any]:
        return {"create_s": self.created, "online_s": self.online, "failures": self.failures}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.close()
        self.github.close()
        self.emu.stop()


def record_launch(figures: Figures, prefix: str, launch: dict[str, Any]) -> None:
    """``<prefix>_s`` (median), ``<prefix>_p95_s`` and ``<prefix>_max_s`` of the online times."""
    online = summary(launch["online_s"])
    keys = [f"{prefix}_s", f"{prefix}_p95_s", f"{prefix}_max_s"]
    if online["p50"] is None:
        figures.null(
            keys, "no instance came online: " + ("; ".join(launch["failures"])[:400] or "no sample")
        )
        return
    figures.set(keys[0], online["p50"])
    figures.set(keys[1], online["p95"])
    figures.set(keys[2], online["max"])


def record(figures: Figures, key: str, outcome: Outcome | None, reason: str | None = None) -> None:
    """``pickup_<key>_{p50,p95,max}_s`` from an outcome (null with the reason when it produced nothing)."""
    names = [f"pickup_{key}_{s}_s" for s in ("p50", "p95", "max")]
    if outcome is None:
        figures.null(names, reason or "not measured")
        return
    stats = summary(outcome.latencies)
    figures.details.setdefault("pickup", {})[key] = {
        **stats,
        "latencies": [round(x, 4) for x in outcome.latencies],
        "failures": outcome.failures,
        "not_cold": [round(x, 4) for x in outcome.not_cold],
        "setup_s": round(outcome.setup_s, 2),
        "manager_recorded_pickup": outcome.manager_pickup,
    }
    if not outcome.latencies:
        figures.null(names, "no job started: " + "; ".join(outcome.failures)[:400])
        return
    for name, stat in zip(names, ("p50", "p95", "max"), strict=True):
        figures.set(name, stats[stat])


def _latency_key(latency: float) -> str:
    return f"{latency:g}".replace(".", "_")


def run(ctx: Context) -> Figures:
    figures = Figures()
    from github_runner_manager.config import GitHubConfig

    default_poll = float(GitHubConfig.model_fields["poll_interval"].default)
    poll_interval = 3.0 if ctx.quick else default_poll
    latencies = (0.5,) if ctx.quick else (0.5, 2.0)
    redis = start_redis(ctx.tmp / "redis-pickup")
    figures.details["pickup_settings"] = {
        "reconcile_interval_warm_s": RECONCILE_INTERVAL,
        "reconcile_interval_cold_s": "the config default (60 s)",
        "poll_interval_s": poll_interval,
        "backend": "fake (local mode: one runner-app process per instance)",
    }
    try:
        # warm pool, webhooks (and poll) on
        warm_idle = 2 if ctx.quick else 4
        warm = Scenario(
            "warm", "fake", fake_settings(ctx, 0.0), min_idle=warm_idle, webhook=True,
            jobs=warm_idle if ctx.quick else 40, poll_interval=poll_interval, reconcile_interval=RECONCILE_INTERVAL,
        )  # fmt: skip
        ctx.log(f"pickup: warm pool of {warm_idle}, {warm.jobs} jobs")
        record(figures, "warm", run_scenario(ctx, redis, warm, fake_cleanup))
        if ctx.quick:
            record(figures, "warm_poll", None, "skipped in quick mode")
        else:
            warm_poll = Scenario(
                "warm_poll", "fake", fake_settings(ctx, 0.0), min_idle=warm_idle, webhook=False,
                jobs=12, poll_interval=poll_interval, reconcile_interval=RECONCILE_INTERVAL,
            )  # fmt: skip
            ctx.log("pickup: warm pool, webhooks lost")
            record(figures, "warm_poll", run_scenario(ctx, redis, warm_poll, fake_cleanup))
        for latency in (0.5, 2.0):
            key = _latency_key(latency)
            if latency not in latencies:
                record(figures, f"cold_fake_{key}", None, "skipped in quick mode")
                record(figures, f"cold_fake_{key}_poll", None, "skipped in quick mode")
                figures.null(
                    [
                        f"fake_launch_{key}_s",
                        f"fake_launch_{key}_p95_s",
                        f"fake_launch_{key}_max_s",
                    ],
                    "skipped in quick mode",
                )
                continue
            cold = Scenario(
                f"cold_fake_{key}", "fake", fake_settings(ctx, latency), min_idle=0, webhook=True,
                jobs=2 if ctx.quick else 10, poll_interval=poll_interval,
            )  # fmt: skip
            ctx.log(
                f"pickup: cold, create latency {latency:g}s, {cold.jobs} jobs (each after an instance start)"
            )
            launcher = Launcher(ctx, backend_name="fake", settings=fake_settings(ctx, latency))
            try:
                outcome = run_scenario(ctx, redis, cold, fake_cleanup, probe=launcher.once)
            finally:
                launcher.close()
            record(figures, f"cold_fake_{key}", outcome)
            figures.details.setdefault("fake_launch", {})[key] = launcher.result()
            record_launch(figures, f"fake_launch_{key}", launcher.result())
            cold_poll = Scenario(
                f"cold_fake_{key}_poll", "fake", fake_settings(ctx, latency), min_idle=0, webhook=False,
                jobs=2 if ctx.quick else 8, poll_interval=poll_interval,
            )  # fmt: skip
            ctx.log(
                f"pickup: cold, create latency {latency:g}s, webhooks lost, {cold_poll.jobs} jobs"
            )
            record(
                figures, f"cold_fake_{key}_poll", run_scenario(ctx, redis, cold_poll, fake_cleanup)
            )
    finally:
        redis.stop()
    return figures
