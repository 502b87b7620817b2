"""RunnerBinaryCache against the real GitHub emulator's downloads endpoint and runner tarballs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from github_runner_manager.config import GitHubPath
from github_runner_manager.github import GitHubClient
from github_runner_manager.runner_binary import (
    METADATA_FILE,
    ChecksumMismatch,
    RunnerBinary,
    RunnerBinaryCache,
    RunnerBinaryError,
    machine_arch,
)

TOKEN = "ghp_runner-binary-test-token-000"
ORG = GitHubPath.parse("acme")


@pytest.fixture
def client(emulator: Any) -> Iterator[GitHubClient]:
    emulator.control.add_org("acme")
    emulator.control.add_token(TOKEN, orgs=["acme"])
    github = GitHubClient(emulator.url, TOKEN, timeout=5)
    yield github
    github.close()


@pytest.fixture
def cache(client: GitHubClient, tmp_path: Path) -> RunnerBinaryCache:
    return RunnerBinaryCache(tmp_path / "runner-bin", client, ORG)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_update_downloads_verifies_and_records(emulator: Any, cache: RunnerBinaryCache) -> None:
    version = emulator.control.settings()["runner_version"]
    assert cache.current() is None
    assert cache.check() is True  # nothing on disk yet

    binary = cache.update(cache.latest("linux", "x64"))

    assert isinstance(binary, RunnerBinary)
    assert binary.version == version
    assert (binary.os, binary.arch) == ("linux", "x64")
    assert binary.path.is_file()
    assert binary.path.parent == cache.directory
    assert binary.path.name == f"actions-runner-linux-x64-{version}.tar.gz"
    listed = next(
        a
        for a in cache.github.runner_applications(ORG)
        if a.os == "linux" and a.architecture == "x64"
    )
    assert _sha256(binary.path) == binary.sha256 == listed.sha256_checksum
    with tarfile.open(binary.path) as tar:
        assert "config.sh" in tar.getnames()
    meta = json.loads((cache.directory / METADATA_FILE).read_text())
    assert meta == {
        "version": version,
        "os": "linux",
        "arch": "x64",
        "url": listed.download_url,
        "sha256": binary.sha256,
        "filename": binary.path.name,
    }
    assert cache.current() == binary
    assert cache.check() is False
    assert _leftovers(cache.directory) == []


def test_update_is_a_no_op_when_current(cache: RunnerBinaryCache) -> None:
    app = cache.latest("linux", "x64")
    first = cache.update(app)
    stamp = first.path.stat().st_mtime_ns
    assert cache.update(app) == first
    assert first.path.stat().st_mtime_ns == stamp


def test_newer_version_replaces_the_old_tarball(emulator: Any, cache: RunnerBinaryCache) -> None:
    old = cache.update(cache.latest("linux", "x64"))
    emulator.control.set_runner_app(version="2.999.0")

    assert cache.check() is True
    new = cache.update(cache.latest("linux", "x64"))

    assert new.version == "2.999.0"
    assert new.path.is_file() and _sha256(new.path) == new.sha256
    assert not old.path.exists()  # dropped once the new one was in place
    assert cache.current() == new
    assert cache.check() is False
    tarballs = sorted(p.name for p in cache.directory.glob("*.tar.gz"))
    assert tarballs == ["actions-runner-linux-x64-2.999.0.tar.gz"]


def test_tampered_checksum_is_rejected_and_old_binary_kept(
    emulator: Any, cache: RunnerBinaryCache
) -> None:
    old = cache.update(cache.latest("linux", "x64"))
    old_bytes = old.path.read_bytes()
    old_meta = (cache.directory / METADATA_FILE).read_bytes()
    emulator.control.set_runner_app(version="2.999.0", tamper_checksum=True)
    assert cache.check() is True
    app = cache.latest("linux", "x64")
    assert app.sha256_checksum is not None

    with pytest.raises(ChecksumMismatch) as info:
        cache.update(app)

    message = str(info.value)
    assert app.sha256_checksum[:12] in message
    real = hashlib.sha256(
        emulator.emulator.runner_apps.archive("linux", "x64", "2.999.0")
    ).hexdigest()
    assert real[:12] in message
    assert "kept" in message
    assert old.path.read_bytes() == old_bytes
    assert (cache.directory / METADATA_FILE).read_bytes() == old_meta
    assert cache.current() == old
    assert not (cache.directory / app.filename).exists()
    assert _leftovers(cache.directory) == []


def test_missing_checksum_is_refused_unless_allowed(
    emulator: Any, client: GitHubClient, tmp_path: Path
) -> None:
    cache = RunnerBinaryCache(tmp_path / "strict", client, ORG)
    app = dataclasses.replace(cache.latest("linux", "x64"), sha256_checksum=None)

    with pytest.raises(RunnerBinaryError, match="no sha256 checksum"):
        cache.update(app)
    assert cache.current() is None

    lenient = RunnerBinaryCache(tmp_path / "lenient", client, ORG, allow_unverified=True)
    binary = lenient.update(app)
    assert _sha256(binary.path) == binary.sha256


def test_failed_download_leaves_nothing_behind(emulator: Any, cache: RunnerBinaryCache) -> None:
    old = cache.update(cache.latest("linux", "x64"))
    app = dataclasses.replace(
        cache.latest("linux", "x64"),
        download_url=f"{emulator.url}/_emulator/runner-app/no-such-file.tar.gz",
        filename="no-such-file.tar.gz",
        version="9.9.9",
    )
    with pytest.raises(RunnerBinaryError, match="HTTP 404"):
        cache.update(app)
    assert cache.current() == old
    assert _leftovers(cache.directory) == []


def test_oversized_download_is_aborted(emulator: Any, client: GitHubClient, tmp_path: Path) -> None:
    cache = RunnerBinaryCache(tmp_path / "small", client, ORG, max_size=100)
    with pytest.raises(RunnerBinaryError, match="exceeds 100 bytes"):
        cache.update(cache.latest("linux", "x64"))
    assert cache.current() is None
    assert _leftovers(cache.directory) == []


def test_unknown_platform_names_what_is_offered(cache: RunnerBinaryCache) -> None:
    with pytest.raises(RunnerBinaryError, match=r"no runner for linux/s390x .*linux/x64"):
        cache.latest("linux", "s390x")
    assert cache.latest("linux", "aarch64").architecture == "arm64"
    assert cache.latest().architecture == machine_arch()


def test_unreadable_metadata_counts_as_absent(cache: RunnerBinaryCache) -> None:
    cache.update(cache.latest("linux", "x64"))
    (cache.directory / METADATA_FILE).write_text("{not json")
    assert cache.current() is None
    assert cache.check() is True
    (cache.directory / METADATA_FILE).write_text(
        json.dumps(
            {
                "version": "1",
                "os": "linux",
                "arch": "x64",
                "url": "u",
                "sha256": "0",
                "filename": "../evil",
            }
        )
    )
    assert cache.current() is None
