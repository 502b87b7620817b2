"""LXD: instance start and cold job pickup on real system containers from the bench runner image.

* ``lxd_launch_s``: the LXD backend's ``create`` (container from the runner image, the JIT config in
  ``user.jitconfig``, the rendered user-data) until that runner is online at the emulator -- the instance
  start of the cold target, without the manager. One sample right before each cold job (so both see the
  same load on a shared machine), each of them only once no container of ours is left (deleting a container
  on a ``dir`` pool removes a full copy of the image, which competes for the disk); median (``lxd_launch_p95_s``: p95).
* ``pickup_cold_lxd_{p50,p95,max}_s``: as in bench_pickup (cold, webhooks on), with the ``lxd`` backend;
  ``pickup_cold_lxd_poll_*`` with webhooks lost (full mode).

The emulator listens on the lxdbr0 address so the containers reach it; the manager and the webhook stay on
loopback. Every container is removed afterwards (by the manager's prefix).
"""

from __future__ import annotations

import subprocess
from typing import Any

from bench_image import ensure_image, lxd_ready
from bench_pickup import PREFIX, Launcher, Scenario, record, record_launch, run_scenario
from bench_support import Context, Figures, Skip, start_redis, summary

NAME = "lxd"
KEYS = ["lxd_launch_s", "pickup_cold_lxd_p95_s"]
GROUP_SIZE = {"cpu": 1, "memory": "1GiB", "disk": "8GiB"}


def bridge_address(network: str = "lxdbr0") -> str:
    """The host's IPv4 address on the LXD bridge."""
    out = subprocess.run(
        ["lxc", "network", "get", network, "ipv4.address"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    if not out or out == "none":
        raise Skip(f"LXD network {network} has no IPv4 address")
    return out.split("/", 1)[0]


def storage_driver(pool: str = "default") -> str | None:
    """The driver of an LXD storage pool (``dir`` copies the image for every container)."""
    import json

    try:
        out = subprocess.run(
            ["lxc", "query", f"/1.0/storage-pools/{pool}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return str(json.loads(out).get("driver"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def lxd_cleanup(config: dict[str, Any]) -> None:
    from github_runner_manager.backends.lxd import LXDBackend

    backend = LXDBackend(config["backends"]["lxd"], prefix=PREFIX)
    try:
        backend.remove_all(f"{PREFIX}-")
    finally:
        backend.close()


def run(ctx: Context) -> Figures:
    figures = Figures()
    reason = lxd_ready()
    if reason:
        figures.null(KEYS, reason)
        return figures
    try:
        alias = ensure_image(ctx)
    except Skip as exc:
        figures.null(KEYS, str(exc))
        return figures
    host = bridge_address()
    group = {"image": alias, **GROUP_SIZE}
    settings: dict[str, Any] = {}
    from github_runner_manager.config import GitHubConfig

    poll = float(GitHubConfig.model_fields["poll_interval"].default)
    figures.details["lxd"] = {
        "image": alias,
        "bridge_address": host,
        "size": GROUP_SIZE,
        "lxd_poll_interval_s": poll,
        "storage_driver": storage_driver(),
    }
    redis = start_redis(ctx.tmp / "redis-lxd")
    try:
        cold = Scenario(
            "cold_lxd", "lxd", settings, min_idle=0, webhook=True, jobs=1 if ctx.quick else 8,
            poll_interval=30.0, group_extra=group, host=host, job_timeout=300,
        )  # fmt: skip
        ctx.log(f"lxd: cold pickup, {cold.jobs} jobs (each after an instance start)")
        launcher = Launcher(
            ctx, backend_name="lxd", settings=settings, host=host, group_extra=group, timeout=300
        )
        from github_runner_manager.backends.lxd import LXDBackend

        lister = LXDBackend(settings, prefix=PREFIX)
        try:
            outcome = run_scenario(
                ctx,
                redis,
                cold,
                lxd_cleanup,
                probe=launcher.once,
                quiet=lambda: not lister.list(prefix=f"{PREFIX}-"),
            )
        finally:
            launcher.close()
            lister.close()
        launch = launcher.result()
        figures.details["lxd"]["launch"] = launch
        record_launch(figures, "lxd_launch", launch)
        created = summary(launch["create_s"])
        if created["p50"] is not None:
            figures.set("lxd_create_api_s", created["p50"])
        record(figures, "cold_lxd", outcome)
        if ctx.quick:
            record(figures, "cold_lxd_poll", None, "skipped in quick mode")
        else:
            cold_poll = Scenario(
                "cold_lxd_poll", "lxd", settings, min_idle=0, webhook=False, jobs=4, poll_interval=poll,
                group_extra=group, host=host, job_timeout=300,
            )  # fmt: skip
            ctx.log(f"lxd: cold pickup, webhooks lost, {cold_poll.jobs} jobs")
            record(figures, "cold_lxd_poll", run_scenario(ctx, redis, cold_poll, lxd_cleanup))
    finally:
        redis.stop()
    return figures
