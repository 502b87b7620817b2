"""Real LXD for the tests: the daemon (``lxd``), the runner app (``runner_app``) and the image (``runner_image``).

* ``lxd`` runs ``scripts/start-lxd.sh`` once per session (idempotent) or reports the part unavailable
  (skip locally, fail on CI).
* ``runner_app`` is the runner tarball the GitHub emulator's downloads endpoint names (downloaded from
  the emulator on loopback and checked against its ``sha256_checksum``); a generated stand-in only when
  the emulator package is missing.
* ``runner_image`` builds the runner image once per machine: the build cache and the image live under
  ``/var/cache/github-runner-tests``; an existing alias whose ``cache_key`` property equals the key of
  the current inputs (script, templates, runner tarball) is reused without building.

``launched`` collects container names (see ``lxdtools.launch``) and force-deletes them after the test.
Traffic goes only to loopback and to lxdbr0 addresses.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from github_runner_manager.image import build_runner_image, image_cache_key
from tests.functional.lxd.lxdtools import (
    ALIAS,
    START_LXD,
    TEST_CACHE,
    LXDInfo,
    RunnerApp,
    RunnerImage,
    fetch_runner_app,
    image_options,
    image_properties,
    lxc,
)
from tests.parts import unavailable, wait_for


@pytest.fixture
def launched() -> Iterator[list[str]]:
    """Names appended here are force-deleted after the test."""
    names: list[str] = []
    yield names
    for name in names:
        # Right after a container powered itself off LXD may still be "busy" stopping it.
        wait_for(lambda n=name: _deleted(n), timeout=120, interval=0.5, what=f"{name} deleted")


def _deleted(name: str) -> bool:
    result = lxc("delete", "--force", name, check=False, timeout=120)
    return result.returncode == 0 or "not found" in result.stderr.lower()


# --------------------------------------------------------------------------- LXD


@pytest.fixture(scope="session")
def lxd() -> LXDInfo:
    """A running, initialised LXD (scripts/start-lxd.sh), or the part is unavailable."""
    if os.geteuid() != 0:
        unavailable("LXD tests need root (scripts/start-lxd.sh starts the daemon)")
    if shutil.which("lxd") is None and shutil.which("apt-get") is None:
        unavailable("lxd is not installed and apt-get is not available to install it")
    try:
        result = subprocess.run(
            [str(START_LXD)], capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        unavailable("scripts/start-lxd.sh did not finish within 900s")
        raise AssertionError("unreachable") from None
    if result.returncode != 0:
        unavailable(
            f"scripts/start-lxd.sh failed ({result.returncode}): {(result.stderr or result.stdout)[-800:]}"
        )
    print(result.stdout)
    address = lxc("network", "get", "lxdbr0", "ipv4.address").stdout.strip()
    return LXDInfo(bridge="lxdbr0", interface=ipaddress.IPv4Interface(address))


@pytest.fixture(scope="session")
def runner_app() -> RunnerApp:
    """The runner tarball from the emulator's downloads endpoint (cached under the test cache)."""
    return fetch_runner_app(TEST_CACHE / "downloads")


@pytest.fixture(scope="session")
def runner_image(lxd: LXDInfo, runner_app: RunnerApp) -> RunnerImage:
    """The runner image for these inputs: reused when the alias already carries their cache key."""
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    options = image_options(runner_app)
    key = image_cache_key(options)
    # xdist workers each have this session fixture: one builds, the others then reuse.
    with open(TEST_CACHE / ".runner-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_properties(ALIAS).get("cache_key") == key:
            print(f"runner image: reusing {ALIAS} (cache key {key[:12]})")
            return RunnerImage(ALIAS, key, runner_app, None)
        started = time.monotonic()
        result = build_runner_image(options)
        print(
            f"runner image: built {result.timestamped_alias} in {time.monotonic() - started:.1f}s "
            f"(cached rootfs: {result.cached})"
        )
    assert result.alias == ALIAS
    return RunnerImage(ALIAS, key, runner_app, result)
