"""The real parts behind the backend contract suite, one session fixture each.

* ``dockerd`` -- the Docker daemon ``scripts/start-dockerd.sh`` starts or finds (it is left
  running, like LXD), or ``$GHRM_TEST_DOCKER_HOST``; the contract image is ``docker import``-ed
  into it once from the cached test root filesystem. The contract's containers run ``sleep``
  and send no traffic.
* ``moto`` -- ``moto_server`` on a free loopback port.
* ``vcsim`` -- ``scripts/build-vcsim.sh`` builds it once into ``/var/cache/github-runner-tests/vcsim``;
  it serves on a port of its own choosing (printed on stdout), so no port race.
* ``gce`` / ``openstack_cloud`` -- the in-process emulators of ``tests/emulators`` on free ports.
* ``lxd_part`` -- a running LXD (``scripts/start-lxd.sh``), an image imported from the test root
  filesystem, and a project whose ``limits.instances=0`` makes any create a quota failure.

The test root filesystem (Debian's static busybox extracted by mmdebstrap, its applets and a tiny
``/sbin/init``: ~2 MB, ~25 s once) is cached in ``/var/cache/github-runner-tests`` under a file lock,
so xdist workers share one build; small, so that containers are created and removed in a blink.
Any part that cannot start calls ``tests.parts.unavailable`` (skip locally, fail on CI).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.parts import free_port, unavailable, wait_for

ROOT = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("GHRM_TEST_CACHE", "/var/cache/github-runner-tests"))
#: Bump when the recipe below changes: the cached tar's name carries it.
ROOTFS_KEY = hashlib.sha256(b"bookworm busybox-static init-v1").hexdigest()[:12]
#: PID 1 of an LXD container made from the test rootfs: stay up until stopped.
INIT = """#!/bin/sh
trap 'exit 0' TERM INT PWR
while :; do sleep 3600 & wait $!; done
"""


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock shared by every pytest process on the machine (xdist workers included)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


# --------------------------------------------------------------------------- the test root filesystem


def _busybox_rootfs(extracted: Path, target: Path) -> None:
    """A root filesystem of Debian's static busybox, its applets as links and a tiny /sbin/init."""
    work = target.parent / f".busybox-{os.getpid()}"
    work.mkdir(exist_ok=True)
    try:
        with tarfile.open(extracted) as source:
            member = source.getmember("./bin/busybox")
            binary = source.extractfile(member)
            assert binary is not None
            busybox = work / "busybox"
            busybox.write_bytes(binary.read())
            busybox.chmod(0o755)
        applets = run([str(busybox), "--list"], timeout=30).stdout.split()
        with tarfile.open(target, "w") as archive:

            def add_dir(name: str) -> None:
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)

            for directory in (
                "bin",
                "sbin",
                "etc",
                "proc",
                "sys",
                "dev",
                "run",
                "tmp",
                "root",
                "var",
                "var/lib",
                "usr",
                "usr/bin",
            ):
                add_dir(directory)
            archive.add(busybox, arcname="bin/busybox")
            for applet in applets:
                if applet in {"busybox", "init"}:
                    continue
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                archive.addfile(link)
            for name, text in (
                ("sbin/init", INIT),
                ("etc/hostname", "contract\n"),
                ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                ("etc/group", "root:x:0:\n"),
            ):
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o755 if name.startswith("sbin/") else 0o644
                archive.addfile(info, io.BytesIO(data))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def contract_rootfs() -> Path:
    """A ~2 MB root filesystem tar (cached): busybox's sh and tools, and an init for LXD."""
    target = CACHE / f"contract-rootfs-{ROOTFS_KEY}.tar"
    if target.exists():
        return target
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        unavailable("mmdebstrap is missing (scripts/dev-setup.sh installs it)")
    if os.geteuid() != 0:
        unavailable("building the test root filesystem with mmdebstrap needs root")
    with cache_lock("contract-rootfs"):
        if target.exists():
            return target
        extracted = target.with_suffix(".extract.tar")
        result = run(
            [
                str(mmdebstrap),
                "--variant=extract",
                "--include=busybox-static",
                "bookworm",
                str(extracted),
            ],
            timeout=900,
        )
        if result.returncode != 0:
            extracted.unlink(missing_ok=True)
            unavailable(f"mmdebstrap failed ({result.returncode}): {result.stderr[-600:]}")
        partial = target.with_suffix(".partial")
        _busybox_rootfs(extracted, partial)
        extracted.unlink()
        partial.rename(target)
    return target


# --------------------------------------------------------------------------- dockerd


@dataclass
class DockerPart:
    """A reachable Docker daemon and the contract image in it."""

    base_url: str
    image: str


def _docker_ping(base_url: str) -> bool:
    import docker

    client = docker.DockerClient(base_url=base_url, timeout=5, version="auto")
    try:
        return bool(client.ping())
    finally:
        client.close()


def _start_dockerd() -> str:
    """The daemon ``scripts/start-dockerd.sh`` starts (or finds); its last line names it."""
    script = ROOT / "scripts" / "start-dockerd.sh"
    if not script.is_file():
        unavailable("scripts/start-dockerd.sh is missing")
    if os.geteuid() != 0:
        unavailable("scripts/start-dockerd.sh needs root")
    with cache_lock("start-dockerd"):  # xdist workers must not both start one
        result = run(["bash", str(script)], timeout=600)
    if result.returncode != 0:
        unavailable(
            f"scripts/start-dockerd.sh failed ({result.returncode}): "
            f"{(result.stderr or result.stdout)[-600:]}"
        )
    announced = re.findall(r"^DOCKER_HOST=(\S+)$", result.stdout, re.MULTILINE)
    if not announced:
        unavailable(f"scripts/start-dockerd.sh named no DOCKER_HOST: {result.stdout[-400:]}")
    try:
        wait_for(lambda: _docker_ping(announced[-1]), 30, interval=0.2, what="dockerd")
    except TimeoutError as exc:
        unavailable(f"dockerd at {announced[-1]} does not answer: {exc}")
    return announced[-1]


@pytest.fixture(scope="session")
def dockerd(contract_rootfs: Path) -> DockerPart:
    """A Docker daemon holding the contract image ``ghrm-contract:<key>`` (``docker import``-ed once).

    ``$GHRM_TEST_DOCKER_HOST`` names a daemon to use instead of the one of ``scripts/start-dockerd.sh``.
    """
    import docker

    base_url = os.environ.get("GHRM_TEST_DOCKER_HOST") or _start_dockerd()
    image = f"ghrm-contract:{ROOTFS_KEY}"
    client = docker.DockerClient(base_url=base_url, timeout=120, version="auto")
    try:
        with cache_lock("contract-docker-image"):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                client.api.import_image_from_file(
                    str(contract_rootfs), repository="ghrm-contract", tag=ROOTFS_KEY
                )
                client.images.get(image)
    except docker.errors.DockerException as exc:
        unavailable(f"cannot import the contract image into {base_url}: {exc}")
    finally:
        client.close()
    return DockerPart(base_url=base_url, image=image)


# --------------------------------------------------------------------------- moto


@dataclass
class MotoServer:
    url: str

    def post(self, path: str, data: bytes = b"") -> bytes:
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return bytes(reply.read())


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """``moto_server`` on a free loopback port for the session."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        found = shutil.which("moto_server")
        if found is None:
            unavailable("moto_server is missing (pip install 'moto[server]')")
        binary = Path(str(found))
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    server = MotoServer(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        with urllib.request.urlopen(f"{server.url}/moto-api/", timeout=2) as reply:
            return reply.status == 200

    try:
        try:
            wait_for(
                lambda: process.poll() is None and ready(), 30, interval=0.1, what="moto_server"
            )
        except TimeoutError as exc:
            unavailable(f"moto_server did not start: {exc}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


# --------------------------------------------------------------------------- vcsim


@dataclass
class Vcsim:
    host: str
    port: int
    user: str
    password: str

    @property
    def base(self) -> str:
        return f"https://{self.host}:{self.port}"

    def fault(self, method: str, fault: str | None) -> None:
        """Make every later ``method`` call fail with ``fault`` (None clears it)."""
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.base}/ghrm/fault/{method}",
            data=fault.encode() if fault else None,
            method="PUT" if fault else "DELETE",
        )
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            assert reply.status == 204


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    """vcsim (VPX model, TLS) built once and cached, on a port it picks."""
    binary = CACHE / "vcsim"
    with cache_lock("vcsim-build"):
        result = run(["bash", str(ROOT / "scripts" / "build-vcsim.sh"), str(binary)], timeout=900)
    if result.returncode != 0:
        unavailable(
            f"scripts/build-vcsim.sh failed ({result.returncode}): {(result.stderr or result.stdout)[-600:]}"
        )
    out = tmp_path_factory.mktemp("vcsim") / "vcsim.out"
    with open(out, "wb") as handle:
        process = subprocess.Popen(
            [
                str(binary),
                "-host",
                "127.0.0.1",
                "-port",
                "0",
                "-username",
                "ghrm",
                "-password",
                "vcsim-pass",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            line = wait_for(
                lambda: re.search(r"VCSIM_URL=(\S+)", out.read_text()), 30, what="vcsim URL"
            )
        except TimeoutError as exc:
            unavailable(f"vcsim did not start: {exc}: {out.read_text()[-400:]}")
            raise AssertionError("unreachable") from None
        assert isinstance(line, re.Match)
        match = re.match(r"https://([^:]+):([^@]+)@([^:/]+):(\d+)", line.group(1))
        assert match, line.group(1)
        user, password, host, port = match.groups()
        yield Vcsim(host=host, port=int(port), user=user, password=password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# --------------------------------------------------------------------------- REST emulators


@pytest.fixture(scope="session")
def gce_server() -> Iterator[Any]:
    from tests.emulators.gce import start_gce_emulator

    server = start_gce_emulator()
    yield server
    server.stop()


@pytest.fixture
def gce(gce_server: Any) -> Iterator[Any]:
    """The session's GCE emulator, cleared before and after the test."""
    gce_server.reset()
    yield gce_server
    gce_server.reset()


@pytest.fixture(scope="session")
def openstack_server() -> Iterator[Any]:
    from tests.emulators.openstack import start_openstack_emulator

    server = start_openstack_emulator()
    yield server
    server.stop()


@pytest.fixture
def openstack_cloud(openstack_server: Any) -> Iterator[Any]:
    """The session's Keystone + Nova emulator, cleared before and after the test."""
    openstack_server.reset()
    yield openstack_server
    openstack_server.reset()


# --------------------------------------------------------------------------- LXD


@dataclass
class LXDPart:
    image: str
    full_project: str


def _lxc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run(["lxc", *args], timeout=timeout)


@pytest.fixture(scope="session")
def lxd_part(tmp_path_factory: pytest.TempPathFactory, contract_rootfs: Path) -> Iterator[LXDPart]:
    """Running LXD, the contract image imported from the test rootfs, and a zero-quota project."""
    if shutil.which("lxd") is None or shutil.which("lxc") is None:
        unavailable("lxd is not installed (scripts/dev-setup.sh installs it)")
    if run(["lxd", "waitready", "--timeout", "2"], timeout=10).returncode != 0:
        if os.geteuid() != 0:
            unavailable("LXD is not running and starting it needs root")
        result = run(["bash", str(ROOT / "scripts" / "start-lxd.sh")], timeout=900)
        if result.returncode != 0:
            unavailable(
                f"scripts/start-lxd.sh failed ({result.returncode}): {result.stderr[-600:]}"
            )
    alias = f"ghrm-contract-{ROOTFS_KEY}"
    with cache_lock("contract-lxd-image"):
        if _lxc("image", "info", alias, timeout=30).returncode != 0:
            meta = tmp_path_factory.mktemp("lxd-image") / "meta.tar"
            yaml_path = meta.with_name("metadata.yaml")
            yaml_path.write_text(
                f"architecture: x86_64\ncreation_date: {int(time.time())}\n"
                "properties:\n  description: github-runner-manager contract test image\n"
                "  os: debian\n  release: bookworm\n"
            )
            with tarfile.open(meta, "w") as archive:
                archive.add(yaml_path, arcname="metadata.yaml")
            result = _lxc(
                "image", "import", str(meta), str(contract_rootfs), "--alias", alias, timeout=600
            )
            if result.returncode != 0:
                unavailable(f"lxc image import failed: {result.stderr[-600:]}")
    project = f"ghrm-full-{os.getpid()}"
    result = _lxc(
        "project",
        "create",
        project,
        "-c",
        "features.images=false",
        "-c",
        "features.profiles=false",
        "-c",
        "features.storage.volumes=false",
        "-c",
        "limits.instances=0",
        timeout=60,
    )
    if result.returncode != 0:
        unavailable(f"cannot create the LXD project {project}: {result.stderr.strip()}")
    try:
        yield LXDPart(image=alias, full_project=project)
    finally:
        _lxc("project", "delete", project, timeout=60)
