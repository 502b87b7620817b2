"""The runner application tarball on disk: latest version lookup, sha256-verified atomic download.

Promises:

* :meth:`RunnerBinaryCache.update` streams the download into a temporary file **in the cache directory**
  (same file system, so the final ``os.replace`` is atomic), hashing while it streams. Only when the sha256
  equals GitHub's ``sha256_checksum`` is the file renamed into place; then the metadata file
  (``runner-binary.json``: version, os, arch, url, sha256, filename) is replaced atomically, and only then is
  the previous tarball removed. A mismatch raises :class:`ChecksumMismatch` naming both digests (first 12
  characters), removes the temporary file and leaves the current tarball and metadata untouched.
* A download without a checksum from GitHub is refused unless the cache was built with
  ``allow_unverified=True`` (then the computed digest is recorded, and a warning logged).
* The GitHub token is never sent with the download (release assets are public; an API-host URL gets no
  special treatment either), every request has a timeout, and a download larger than ``max_size`` is aborted.
* Concurrent updaters of one directory are serialised with an advisory lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from github_runner_manager.github import GitHubClient, RunnerApplication

if TYPE_CHECKING:
    from github_runner_manager.config import GitHubPath

logger = logging.getLogger(__name__)

METADATA_FILE = "runner-binary.json"
LOCK_FILE = ".runner-binary.lock"
CHUNK = 1024 * 1024
MAX_SIZE = 1024**3

#: ``platform.machine()`` → the ``architecture`` names of GitHub's downloads endpoint.
ARCH_ALIASES = {
    "x86_64": "x64",
    "amd64": "x64",
    "x64": "x64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "armhf": "arm",
    "arm": "arm",
    "i386": "x86",
    "i686": "x86",
    "x86": "x86",
    "s390x": "s390x",
    "ppc64le": "ppc64le",
}
_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")


class RunnerBinaryError(Exception):
    """The runner binary could not be found, downloaded or verified; the message says why."""


class ChecksumMismatch(RunnerBinaryError):  # noqa: N818 - name fixed by docs/architecture.md
    """The downloaded file's sha256 differs from GitHub's checksum; the old binary was kept."""


@dataclass(frozen=True)
class RunnerBinary:
    """A verified runner tarball on disk."""

    version: str
    os: str
    arch: str
    url: str
    sha256: str
    path: Path


def machine_arch(machine: str | None = None) -> str:
    """GitHub's architecture name for ``machine`` (default: this host's ``platform.machine()``)."""
    name = (machine or platform.machine()).lower()
    return ARCH_ALIASES.get(name, name)


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Sort key for versions like ``2.317.0`` (numeric parts compare as numbers)."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.\-+]", version)
    )


class RunnerBinaryCache:
    """The cached runner tarball in ``directory`` for one GitHub target.

    Args:
        directory: where the tarball and its metadata live (created if missing).
        github: the client used for the downloads listing; its ``timeout`` bounds each download read.
        path: the org/repo/enterprise whose downloads endpoint is asked.
        allow_unverified: accept a download GitHub gives no checksum for (off by default).
        max_size: abort a download larger than this many bytes.
        session: HTTP session for the download (one without any GitHub credentials is created otherwise).
    """

    def __init__(
        self,
        directory: Path,
        github: GitHubClient,
        path: GitHubPath,
        *,
        allow_unverified: bool = False,
        max_size: int = MAX_SIZE,
        session: requests.Session | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.github = github
        self.path = path
        self.allow_unverified = allow_unverified
        self.max_size = max_size
        self._session = session or requests.Session()

    # ---------------------------------------------------------------------------------- lookups
    def latest(self, os_name: str = "linux", arch: str | None = None) -> RunnerApplication:
        """The application GitHub offers for ``os_name``/``arch`` (arch default: this machine's)."""
        wanted = machine_arch(arch) if arch else machine_arch()
        apps = self.github.runner_applications(self.path)
        for app in apps:
            if app.os == os_name and app.architecture == wanted:
                return app
        offered = ", ".join(sorted(f"{a.os}/{a.architecture}" for a in apps)) or "none"
        raise RunnerBinaryError(
            f"GitHub offers no runner for {os_name}/{wanted} at {self.path} (offered: {offered})"
        )

    def current(self) -> RunnerBinary | None:
        """What is on disk, from the metadata file; ``None`` when absent, unreadable, or the tarball is gone."""
        meta_path = self.directory / METADATA_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            binary = RunnerBinary(
                version=str(meta["version"]),
                os=str(meta["os"]),
                arch=str(meta["arch"]),
                url=str(meta["url"]),
                sha256=str(meta["sha256"]),
                path=self.directory / _safe_filename(str(meta["filename"])),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, RunnerBinaryError) as exc:
            logger.warning(
                "runner binary metadata %s unreadable (%s); treating as absent", meta_path, exc
            )
            return None
        if not binary.path.is_file():
            logger.warning("runner binary %s listed in %s is missing", binary.path, meta_path)
            return None
        return binary

    def check(self) -> bool:
        """True when GitHub offers a newer version (or nothing usable is on disk yet)."""
        current = self.current()
        latest = self.latest(current.os, current.arch) if current else self.latest()
        if current is None:
            return True
        return _version_key(latest.version) > _version_key(current.version)

    # ---------------------------------------------------------------------------------- update
    def update(self, app: RunnerApplication | None = None) -> RunnerBinary:
        """Make ``app`` (default: :meth:`latest`) the cached binary; a no-op when it already is.

        Raises:
            ChecksumMismatch: the download does not match GitHub's sha256; the old binary is kept.
            RunnerBinaryError: no checksum (and ``allow_unverified`` is off), HTTP or I/O failure.
        """
        app = app or self.latest()
        expected = (app.sha256_checksum or "").strip().lower() or None
        if expected is None and not self.allow_unverified:
            raise RunnerBinaryError(
                f"GitHub gives no sha256 checksum for {app.filename}; refusing an unverified download "
                "(allow_unverified=True accepts it)"
            )
        filename = _safe_filename(app.filename)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._remove_partials()
            current = self.current()
            if (
                current is not None
                and current.path.name == filename
                and current.version == app.version
                and (expected is None or current.sha256 == expected)
            ):
                logger.info("runner binary %s already cached at %s", app.version, current.path)
                return current
            digest, temp = self._download(app.download_url)
            try:
                if expected is not None and digest != expected:
                    raise ChecksumMismatch(
                        f"sha256 mismatch for {app.filename} {app.version}: GitHub says {expected[:12]}…, "
                        f"the download is {digest[:12]}…; kept the current binary"
                        + (f" {current.version}" if current else "")
                    )
                if expected is None:
                    logger.warning(
                        "runner binary %s accepted without a checksum (sha256 %s)",
                        app.filename,
                        digest,
                    )
                target = self.directory / filename
                os.replace(temp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
            binary = RunnerBinary(
                version=app.version,
                os=app.os,
                arch=app.architecture,
                url=app.download_url,
                sha256=digest,
                path=target,
            )
            self._write_metadata(binary)
            _fsync_dir(self.directory)
            if current is not None and current.path != target:
                with contextlib.suppress(FileNotFoundError):
                    current.path.unlink()
            logger.info(
                "runner binary updated to %s (%s/%s, sha256 %s) at %s",
                binary.version,
                binary.os,
                binary.arch,
                digest[:12],
                target,
            )
            return binary

    # ---------------------------------------------------------------------------------- internals
    def _remove_partials(self) -> None:
        """Delete temporary files an updater killed mid-download left behind (call with the lock held:
        temporary files are only made under it, so none of them belongs to a live updater)."""
        for pattern in (".download-*.part", ".meta-*.part"):
            for stale in self.directory.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
                    logger.info("removed %s left by an interrupted update", stale.name)

    def _download(self, url: str) -> tuple[str, Path]:
        """Stream ``url`` into a temporary file beside the target; return (sha256 hex, temp path)."""
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=".download-", suffix=".part")
        temp = Path(name)
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self._session.get(url, stream=True, timeout=self.github.timeout) as resp:
                        if resp.status_code != 200:
                            raise RunnerBinaryError(
                                f"download of {_short(url)} failed: HTTP {resp.status_code}"
                            )
                        for chunk in resp.iter_content(CHUNK):
                            size += len(chunk)
                            if size > self.max_size:
                                raise RunnerBinaryError(
                                    f"download of {_short(url)} exceeds {self.max_size} bytes; aborted"
                                )
                            hasher.update(chunk)
                            out.write(chunk)
                except requests.RequestException as exc:
                    raise RunnerBinaryError(
                        f"download of {_short(url)} failed: {type(exc).__name__}"
                    ) from None
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        return hasher.hexdigest(), temp

    def _write_metadata(self, binary: RunnerBinary) -> None:
        data: dict[str, Any] = {
            "version": binary.version,
            "os": binary.os,
            "arch": binary.arch,
            "url": binary.url,
            "sha256": binary.sha256,
            "filename": binary.path.name,
        }
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=".meta-", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(name, self.directory / METADATA_FILE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / LOCK_FILE, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _safe_filename(name: str) -> str:
    """Refuse file names that could escape the cache directory or hide (``../x``, ``/etc/x``, ``.x``)."""
    if not _SAFE_FILENAME.match(name) or name in (METADATA_FILE, LOCK_FILE):
        raise RunnerBinaryError(f"unsafe runner file name {name!r}")
    return name


def _short(url: str) -> str:
    """A URL without its query (a download URL may carry a signature)."""
    return url.split("?", 1)[0]


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
