"""Helpers for the LXD tests: ``lxc`` with list arguments, unique container names, IPv4 polling,
the runner app from the GitHub emulator, and the tests' image build options.

Traffic goes only to loopback and to lxdbr0 addresses.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import os
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from github_runner_manager.image import ImageBuildOptions, ImageBuildResult
from tests.parts import wait_for

ROOT = Path(__file__).resolve().parents[3]
START_LXD = ROOT / "scripts" / "start-lxd.sh"
BUILD_SCRIPT = ROOT / "scripts" / "build-runner-image.sh"
TEST_CACHE = Path(os.environ.get("GHRM_TEST_CACHE", "/var/cache/github-runner-tests"))
IMAGE_CACHE = TEST_CACHE / "image-cache"
ALIAS_PREFIX = os.environ.get("GHRM_TEST_ALIAS_PREFIX", "ghrm-test")
BASE = "debian:bookworm"
ALIAS = f"{ALIAS_PREFIX}-debian-bookworm"
#: Prefix of every container these tests launch by hand.
CONTAINER_PREFIX = "ghrmt-"


@dataclass(frozen=True)
class LXDInfo:
    """The running LXD as the tests see it."""

    bridge: str
    interface: ipaddress.IPv4Interface

    @property
    def address(self) -> str:
        """The bridge's own address (the host, as containers reach it)."""
        return str(self.interface.ip)


@dataclass(frozen=True)
class RunnerApp:
    """A runner tarball with what the downloads endpoint said about it."""

    path: Path
    sha256: str
    version: str
    source: str


@dataclass(frozen=True)
class RunnerImage:
    """The session's runner image."""

    alias: str
    cache_key: str
    app: RunnerApp
    build: ImageBuildResult | None  # None: reused an existing alias


def lxc(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``lxc`` with list arguments."""
    return subprocess.run(
        ["lxc", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def alias_target(alias: str) -> str | None:
    """The fingerprint an LXD alias points at, or None."""
    result = lxc("query", f"/1.0/images/aliases/{alias}", check=False)
    if result.returncode != 0:
        return None
    return str(json.loads(result.stdout)["target"])


def image_properties(alias: str) -> dict[str, str]:
    """The properties of the image behind an alias (empty if there is none)."""
    fingerprint = alias_target(alias)
    if fingerprint is None:
        return {}
    result = lxc("query", f"/1.0/images/{fingerprint}", check=False)
    if result.returncode != 0:
        return {}
    return dict(json.loads(result.stdout).get("properties") or {})


def delete_images(prefix: str) -> None:
    """Delete every image that has an alias starting with ``prefix``."""
    result = lxc("query", "/1.0/images/aliases?recursion=1", check=False)
    if result.returncode != 0:
        return
    for entry in json.loads(result.stdout):
        if entry["name"].startswith(prefix):
            lxc("image", "delete", entry["target"], check=False)


def container_name(tag: str = "c") -> str:
    """A container name unique to this call."""
    return f"{CONTAINER_PREFIX}{tag}-{uuid.uuid4().hex[:8]}"


def ipv4_of(name: str) -> str | None:
    """The container's global IPv4 address on eth0, or None yet."""
    result = lxc("query", f"/1.0/instances/{name}/state", check=False)
    if result.returncode != 0:
        return None
    state = json.loads(result.stdout)
    eth0 = (state.get("network") or {}).get("eth0") or {}
    for address in eth0.get("addresses", []):
        if address.get("family") == "inet" and address.get("scope") == "global":
            return str(address["address"])
    return None


def wait_ipv4(name: str, timeout: float = 60) -> str:
    """Poll until the container has an IPv4 address."""
    return str(
        wait_for(lambda: ipv4_of(name), timeout=timeout, interval=0.2, what=f"IPv4 of {name}")
    )


def lxc_exec(name: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command in a container (no check: callers look at the return code)."""
    return lxc("exec", name, "--", *command, timeout=timeout, check=False)


def launch(alias: str, names: list[str], *config: str, tag: str = "c") -> str:
    """Launch a container from ``alias`` (``config`` as ``key=value``); record it for cleanup."""
    name = container_name(tag)
    names.append(name)
    args = ["launch", alias, name]
    for item in config:
        args += ["-c", item]
    lxc(*args, timeout=300)
    return name


# --------------------------------------------------------------------------- runner app


def _stand_in_tarball(version: str) -> bytes:
    """A deterministic runner-shaped tarball (used only when the emulator package is missing)."""
    files = {
        ".runner-version": f"{version}\n",
        "run.sh": "#!/bin/sh\necho stand-in runner\n",
        "config.sh": "#!/bin/sh\n",
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def fetch_runner_app(directory: Path) -> RunnerApp:
    """The linux/x64 runner app the emulator's downloads endpoint names, verified by sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        from github_emulator.testing import start_emulator
    except ImportError:
        version = "2.321.0"
        data = _stand_in_tarball(version)
        path = directory / f"actions-runner-linux-x64-{version}.tar.gz"
        path.write_bytes(data)
        return RunnerApp(path, hashlib.sha256(data).hexdigest(), version, "stand-in")
    with start_emulator(host="127.0.0.1", port=0, orgs=["acme"], tokens=["t0k"]) as gh:
        listing = requests.get(
            f"{gh.url}/orgs/acme/actions/runners/downloads",
            headers={"Authorization": "token t0k"},
            timeout=10,
        )
        listing.raise_for_status()
        entry = next(e for e in listing.json() if e["os"] == "linux" and e["architecture"] == "x64")
        data = requests.get(entry["download_url"], timeout=30).content
    sha256 = hashlib.sha256(data).hexdigest()
    assert sha256 == entry["sha256_checksum"], (
        "the emulator's runner app does not match its checksum"
    )
    version = entry["filename"].removesuffix(".tar.gz").rsplit("-", 1)[-1]
    path = directory / entry["filename"]
    tmp = path.with_suffix(f".{os.getpid()}.part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return RunnerApp(path, sha256, version, "emulator")


def image_options(app: RunnerApp, **overrides: object) -> ImageBuildOptions:
    """Build options for the tests' image; ``overrides`` replace fields."""
    values: dict[str, object] = {
        "runner_tarball": app.path,
        "runner_sha256": app.sha256,
        "runner_version": app.version,
        "base": BASE,
        "alias_prefix": ALIAS_PREFIX,
        "cache_dir": IMAGE_CACHE,
        "log_file": TEST_CACHE / "build.log",
        "vm": False,
        "script": BUILD_SCRIPT,
        "timeout": 1500.0,
    }
    values.update(overrides)
    return ImageBuildOptions(**values)  # type: ignore[arg-type]
