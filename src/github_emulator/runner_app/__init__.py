"""The emulator's runner application: a deterministic tarball served by the downloads endpoint.

The tarball mirrors the layout of GitHub's ``actions-runner-<os>-<arch>-<version>.tar.gz``:
``config.sh`` and ``run.sh`` at the top (POSIX sh), the agent in ``bin/Runner.Listener``
(python3 standard library only) and ``.runner-version``. Same inputs give the same bytes, so the
advertised sha256 is stable.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import threading
from importlib import resources
from typing import Any

PLATFORMS: tuple[tuple[str, str], ...] = (
    ("osx", "x64"),
    ("osx", "arm64"),
    ("linux", "x64"),
    ("linux", "arm"),
    ("linux", "arm64"),
)
FILENAME_RE = re.compile(
    r"^actions-runner-(?P<os>linux|osx)-(?P<arch>x64|arm64|arm)-(?P<version>\d+\.\d+\.\d+)\.tar\.gz$"
)
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z: fixed so the archive is reproducible


def filename(os_name: str, arch: str, version: str) -> str:
    return f"actions-runner-{os_name}-{arch}-{version}.tar.gz"


def _source(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def build_tarball(version: str, arch: str = "x64", os_name: str = "linux") -> bytes:
    """Build the runner application archive (deterministic: same input → same bytes)."""
    if not VERSION_RE.match(version):
        raise ValueError(f"version must look like 2.321.0, got {version!r}")
    entries: list[tuple[str, bytes | None, int]] = [
        (".runner-platform", f"{os_name}-{arch}\n".encode(), 0o644),
        (".runner-version", f"{version}\n".encode(), 0o644),
        ("bin", None, 0o755),
        ("bin/Runner.Listener", _source("agent.py"), 0o755),
        ("config.sh", _source("config.sh"), 0o755),
        ("run.sh", _source("run.sh"), 0o755),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in sorted(entries):
            info = tarfile.TarInfo(name)
            info.mtime = _MTIME
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


class RunnerAppCatalog:
    """Builds and caches the archives, and renders the downloads listing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], bytes] = {}

    def archive(self, os_name: str, arch: str, version: str) -> bytes:
        key = (os_name, arch, version)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build_tarball(version, arch, os_name)
            return self._cache[key]

    def by_filename(self, name: str) -> bytes | None:
        match = FILENAME_RE.match(name)
        if match is None:
            return None
        return self.archive(match["os"], match["arch"], match["version"])

    def sha256(self, os_name: str, arch: str, version: str) -> str:
        return hashlib.sha256(self.archive(os_name, arch, version)).hexdigest()

    def listing(
        self, base_url: str, version: str, tamper_checksum: bool = False
    ) -> list[dict[str, Any]]:
        """The ``…/actions/runners/downloads`` body: one entry per os/arch, pointing back here."""
        out = []
        for os_name, arch in PLATFORMS:
            name = filename(os_name, arch, version)
            checksum = self.sha256(os_name, arch, version)
            if tamper_checksum:
                checksum = hashlib.sha256(b"tampered:" + checksum.encode()).hexdigest()
            out.append(
                {
                    "os": os_name,
                    "architecture": arch,
                    "download_url": f"{base_url}/_emulator/runner-app/{name}",
                    "filename": name,
                    "sha256_checksum": checksum,
                }
            )
        return out
