"""Docker end to end: jobs from the GitHub emulator run inside Docker containers and complete.

The real parts: ``dockerd`` (the session's daemon, ``conftest.py``), ``redis-server`` and the GitHub
emulator, which listens only on the host's address on the daemon's bridge (``docker0``, 172.17.0.1 by
default) so that the manager (on the host) and the runners (in containers) reach it at the same URL.
No other address is a target: the containers talk to the bridge address, everything else is loopback.

The runner image is a Debian root filesystem (essential packages) with ``python3`` (mmdebstrap, cached in
``/var/cache/github-runner-tests`` under a file lock, keyed by its recipe) plus the emulator's runner
application in ``/opt/actions-runner``, ``docker import``-ed once per (rootfs, runner app) pair.

The manager is the real :class:`RunnerManager` serving in a thread (webhooks from the emulator on
loopback, poll fallback, reconcile loop) with one group on the ``docker`` backend. The manager's
default user-data is a ``#cloud-config`` (no cloud-init in a container), so the group's Docker
settings name a ``command`` that starts the runner app with the JIT config the backend passes as
``RUNNER_JITCONFIG``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import secrets
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from github_runner_manager.config import parse_config
from github_runner_manager.manager import RunnerManager
from tests.functional.backends.conftest import CACHE, cache_lock, run
from tests.parts import free_port, unavailable, wait_for

pytestmark = pytest.mark.needs_docker

TOKEN = "ghp_docker_e2e_token_0123456789"
SECRET = "docker-e2e-webhook-secret"
ORG, REPO = "acme", "app"
LABEL = "docker-e2e"
JOBS = 4
#: Bump when the recipe changes: the cached root filesystem's name carries it.
BASE_RECIPE = b"bookworm essential python3 hostname nodoc v2"
BASE_KEY = hashlib.sha256(BASE_RECIPE).hexdigest()[:12]
#: Starts the runner app with the JIT config the backend put in RUNNER_JITCONFIG, keeping it out of
#: the process arguments (the runner's documented input variable instead of --jitconfig).
RUNNER_COMMAND = [
    "/bin/sh",
    "-c",
    'export ACTIONS_RUNNER_INPUT_JITCONFIG="$RUNNER_JITCONFIG"; unset RUNNER_JITCONFIG; '
    "cd /opt/actions-runner && exec ./run.sh",
]


# --------------------------------------------------------------------------- the runner image
def _python_rootfs() -> Path:
    """Debian bookworm (essential packages) with python3 (≈150 MB tar), built once per machine and cached."""
    target = CACHE / f"docker-e2e-rootfs-{BASE_KEY}.tar"
    if target.exists():
        return target
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        unavailable("mmdebstrap is missing (scripts/dev-setup.sh installs it)")
    if os.geteuid() != 0:
        unavailable("building the runner root filesystem with mmdebstrap needs root")
    with cache_lock("docker-e2e-rootfs"):
        if target.exists():
            return target
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        result = run(
            [
                str(mmdebstrap),
                "--variant=essential",  # no apt: nothing is installed in the container
                "--include=python3,hostname",
                "--format=tar",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "bookworm",
                str(partial),
            ],
            timeout=900,
        )
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            unavailable(f"mmdebstrap failed ({result.returncode}): {result.stderr[-600:]}")
        partial.rename(target)
    return target


def _runner_image_tar(base: Path, app: bytes, out: Path) -> Path:
    """``base`` plus the runner app unpacked in /opt/actions-runner, as one tar for ``docker import``."""
    shutil.copyfile(base, out)
    with (
        tarfile.open(fileobj=io.BytesIO(gzip.decompress(app))) as source,
        tarfile.open(out, "a") as image,
    ):
        info = tarfile.TarInfo("opt/actions-runner")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        image.addfile(info)
        for member in source.getmembers():
            member.name = f"opt/actions-runner/{member.name.removeprefix('./')}"
            image.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out


@pytest.fixture(scope="session")
def runner_image(dockerd: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``ghrm-e2e-runner:<key>`` in the test daemon: python3 + the emulator's runner app."""
    import docker

    from github_emulator.runner_app import build_tarball
    from github_emulator.settings import Settings

    app = build_tarball(Settings().runner_version)
    key = hashlib.sha256(BASE_KEY.encode() + app).hexdigest()[:12]
    image = f"ghrm-e2e-runner:{key}"
    base = _python_rootfs()
    client = docker.DockerClient(base_url=dockerd.base_url, timeout=300, version="auto")
    try:
        with cache_lock("docker-e2e-image"):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                tar = _runner_image_tar(
                    base, app, tmp_path_factory.mktemp("e2e-image") / "rootfs.tar"
                )
                client.api.import_image_from_file(str(tar), repository="ghrm-e2e-runner", tag=key)
                tar.unlink()
                client.images.get(image)
    except docker.errors.DockerException as exc:
        unavailable(f"cannot import the runner image into {dockerd.base_url}: {exc}")
    finally:
        client.close()
    return image


# --------------------------------------------------------------------------- the emulator on the bridge
def bridge_address(base_url: str) -> str:
    """The host's own address on the daemon's default bridge (where containers reach the host)."""
    import docker

    client = docker.DockerClient(base_url=base_url, timeout=30, version="auto")
    try:
        attrs = client.networks.get("bridge").attrs
    finally:
        client.close()
    configs = (attrs.get("IPAM") or {}).get("Config") or []
    gateway = next((c.get("Gateway") for c in configs if c.get("Gateway")), None)
    interface = (attrs.get("Options") or {}).get("com.docker.network.bridge.name")
    if not gateway and interface:  # the default bridge names no gateway: ask the interface
        shown = run(["ip", "-4", "-o", "addr", "show", "dev", interface], timeout=10).stdout
        found = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", shown)
        gateway = found.group(1) if found else None
    if not gateway:
        unavailable(f"the Docker daemon at {base_url} has no bridge gateway address")
        raise AssertionError("unreachable")
    with socket.socket() as sock:  # it must be an address of this host, else we cannot serve on it
        try:
            sock.bind((gateway, 0))
        except OSError as exc:
            unavailable(f"the bridge address {gateway} is not an address of this host: {exc}")
    return str(gateway)


@pytest.fixture
def bridge_emulator(dockerd: Any) -> Iterator[Any]:
    """The GitHub emulator on the bridge address only, with one org, repo and token."""
    from github_emulator.testing import start_emulator

    running = start_emulator(host=bridge_address(dockerd.base_url), port=0)
    try:
        running.control.add_org(ORG)
        running.control.add_repo(ORG, REPO)
        running.control.add_token(TOKEN, orgs=[ORG], repos=[f"{ORG}/{REPO}"])
        yield running
    finally:
        running.stop()


# --------------------------------------------------------------------------- helpers
def containers(base_url: str, prefix: str) -> list[dict[str, Any]]:
    """Every container (running or not) whose name starts with ``prefix``, asked of dockerd directly."""
    import docker

    client = docker.DockerClient(base_url=base_url, timeout=30, version="auto")
    try:
        found = client.api.containers(all=True, filters={"name": prefix})
    finally:
        client.close()
    return [c for c in found if any(n.lstrip("/").startswith(prefix) for n in c["Names"])]


def remove_containers(base_url: str, prefix: str) -> None:
    import docker

    client = docker.DockerClient(base_url=base_url, timeout=60, version="auto")
    try:
        for summary in containers(base_url, prefix):
            with contextlib.suppress(docker.errors.DockerException):
                client.api.remove_container(summary["Id"], force=True)
    finally:
        client.close()


def config_for(emulator_url: str, redis_url: str, tmp: Path, prefix: str, **docker: Any) -> Any:
    return parse_config(
        {
            "github": {"url": emulator_url, "token": TOKEN, "paths": [ORG], "poll_interval": "2s"},
            "webhook": {"listen": f"127.0.0.1:{free_port()}", "path": "/webhook", "secret": SECRET},
            "redis": {"url": redis_url, "key_prefix": "ghrm"},
            "reconcile_interval": "2s",
            "register_timeout": "90s",
            "offline_timeout": "60s",
            "concurrency": 8,
            "prefix": prefix,
            "unit": "u0",
            "state_dir": str(tmp / "state"),
            "metrics_listen": None,
            "runner_groups": [
                {
                    "name": "dock",
                    "labels": [LABEL],
                    "backend": "docker",
                    "min_idle": 1,
                    "max_runners": JOBS,
                    "cpu": 1,
                    "memory": "512MiB",
                    "disk": "1GiB",
                },
            ],
            "backends": {"docker": docker},
        }
    )


# --------------------------------------------------------------------------- the test
def test_jobs_run_inside_docker_containers_and_complete(
    dockerd: Any, runner_image: str, bridge_emulator: Any, redis_url: str, tmp_path: Path
) -> None:
    emulator = bridge_emulator
    prefix = "de" + secrets.token_hex(3)
    config = config_for(
        emulator.url, redis_url, tmp_path, prefix,
        base_url=dockerd.base_url, image=runner_image, command=RUNNER_COMMAND,
    )  # fmt: skip
    assert config.webhook is not None
    emulator.control.add_hook(
        f"http://{config.webhook.listen}{config.webhook.path}", SECRET, org=ORG
    )
    manager = RunnerManager(config)
    stop = threading.Event()
    service = threading.Thread(target=manager.serve, args=(stop,), daemon=True)
    try:
        manager.validate()  # the image is on the daemon
        service.start()
        runners = run_jobs(emulator, dockerd.base_url, prefix)
        # the husks (containers whose ephemeral runner exited) are removed by the service, and
        # the min_idle pool is refilled with a fresh container
        wait_for(
            lambda: not any(c["Names"][0].lstrip("/") in runners
                            for c in containers(dockerd.base_url, prefix)),
            60, interval=0.25, what="the job containers removed",
        )  # fmt: skip
        wait_for(
            lambda: any(r["status"] == "online" and r["name"] not in runners
                        for r in _ours(emulator, prefix)),
            60, interval=0.25, what="the pool refilled",
        )  # fmt: skip
        stop.set()
        service.join(60)
        assert not service.is_alive()

        # the pool runner's container got the JIT config in its environment and the user-data
        # file; the GitHub token is nowhere in it
        [pool] = containers(dockerd.base_url, prefix)
        inspected = inspect(dockerd.base_url, pool["Id"])
        env = dict(e.split("=", 1) for e in inspected["Config"]["Env"])
        assert env["RUNNER_JITCONFIG"] and env["RUNNER_NAME"] == pool["Names"][0].lstrip("/")
        assert TOKEN not in str(inspected)
        copied = user_data(dockerd.base_url, pool["Id"])
        assert env["RUNNER_JITCONFIG"] in copied and TOKEN not in copied

        # a flush leaves no container, no GitHub runner and no record
        manager.flush(flush_busy=True)
        assert containers(dockerd.base_url, prefix) == []
        assert manager.backend("docker").list() == []
        assert _ours(emulator, prefix) == []
        assert manager.store.list_runners() == []
    finally:
        stop.set()
        if service.is_alive():
            service.join(60)
        manager.close()
        remove_containers(dockerd.base_url, prefix)


def run_jobs(emulator: Any, base_url: str, prefix: str) -> list[str]:
    """Queue the jobs once the pool runner is online; check where and how they ran; their runners."""
    # the min_idle runner: a container whose runner came online on GitHub
    wait_for(
        lambda: any(r["status"] == "online" for r in _ours(emulator, prefix)),
        60, interval=0.2, what="the idle pool runner online",
    )  # fmt: skip
    steps = [
        {"name": "hostname", "command": "hostname"},
        {"name": "os-release", "command": "cat /etc/os-release"},
        {"name": "in a container", "command": "test -f /.dockerenv && echo dockerenv"},
    ]
    job_ids = [
        emulator.control.queue_job(f"{ORG}/{REPO}", ["self-hosted", LABEL], steps)
        for _ in range(JOBS)
    ]

    def finished() -> bool:
        return all(emulator.control.get_job(j)["status"] == "completed" for j in job_ids)

    try:
        wait_for(finished, 90, interval=0.25, what=f"{JOBS} jobs completed")
    except TimeoutError:
        jobs = [emulator.control.get_job(j) for j in job_ids]
        raise AssertionError(
            f"jobs not completed: {[(j['id'], j['status'], j['runner_name']) for j in jobs]}; "
            f"containers: {[(c['Names'], c['State']) for c in containers(base_url, prefix)]}"
        ) from None
    jobs = [emulator.control.get_job(j) for j in job_ids]
    assert [j["conclusion"] for j in jobs] == ["success"] * JOBS, jobs
    runners = [j["runner_name"] for j in jobs]
    assert len(set(runners)) == JOBS, runners  # ephemeral: one job per runner
    for job in jobs:
        by_name = {s["name"]: s for s in job["steps"]}
        # the job ran in the runner's own container: its hostname is the runner (container) name
        assert job["runner_name"].startswith(f"{prefix}-dock-")
        assert by_name["hostname"]["output"].strip() == job["runner_name"], job
        assert "Debian GNU/Linux 12 (bookworm)" in by_name["os-release"]["output"]
        assert by_name["in a container"]["output"].strip() == "dockerenv"
    return runners


def inspect(base_url: str, container_id: str) -> dict[str, Any]:
    import docker

    client = docker.DockerClient(base_url=base_url, timeout=30, version="auto")
    try:
        return dict(client.api.inspect_container(container_id))
    finally:
        client.close()


def user_data(base_url: str, container_id: str) -> str:
    """The user-data file the backend copied into the container."""
    import docker

    client = docker.DockerClient(base_url=base_url, timeout=30, version="auto")
    try:
        stream, _ = client.api.get_archive(container_id, "/var/lib/ghrm/user-data")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.extractfile("user-data")
            assert member is not None
            return member.read().decode()
    finally:
        client.close()


def _ours(emulator: Any, prefix: str) -> list[dict[str, Any]]:
    return [r for r in emulator.control.runners() if r["name"].startswith(f"{prefix}-")]
