"""Docker backend: one container per runner on a Docker host, through the docker SDK.

Images come from the image builder's root filesystem by ``docker import`` (no registry is needed).
The runner's JIT config reaches the container as the environment variable ``RUNNER_JITCONFIG``; the
rendered user-data is copied into the container (``user_data_path``) before it starts, so neither
appears in a label. Every container carries the manager's tags as Docker labels, which is how
``list`` finds orphans. Containers are never privileged; they reach the host as
``host.docker.internal`` (``--add-host host.docker.internal:host-gateway``).

Without ``command``, a container runs its user-data when that is a script (``#!``) and exits with
status 64 otherwise (a container has no cloud-init to read a ``#cloud-config``), so the manager
cleans it up as never registered.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from github_runner_manager.backends.base import (
    TAG_PREFIX,
    AuthError,
    Backend,
    BackendError,
    BackendSettings,
    CapacityError,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    missing_dependency,
)

try:
    import docker
    import docker.errors
    import requests.exceptions
    from docker.models.containers import Container
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("docker", "docker", extra="docker") from _exc

logger = logging.getLogger(__name__)

#: Docker container states → provider-neutral states.
STATE_MAP: dict[str, InstanceState] = {
    "created": InstanceState.PENDING,
    "restarting": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "paused": InstanceState.STOPPED,
    "exited": InstanceState.STOPPED,
    "removing": InstanceState.DELETING,
    "dead": InstanceState.ERROR,
}

#: Messages with which dockerd refuses a container it has no room for.
_CAPACITY_PATTERNS = re.compile(
    r"CPUs available|no space left on device|cannot allocate memory|"
    r"Minimum memory limit|resource temporarily unavailable|too many open files",
    re.IGNORECASE,
)

#: Runs the user-data when it is a script; says what to do otherwise.
_BOOTSTRAP = """\
ud="$GHRM_USER_DATA"
if [ -s "$ud" ] && [ "$(head -c 2 "$ud")" = '#!' ]; then
  chmod 0700 "$ud"
  exec "$ud"
fi
echo "ghrm: $ud is not a script (#!): set backends.docker.command to start the runner" >&2
exit 64
"""


class DockerSettings(BackendSettings):
    """``backends.docker`` in the manager's configuration.

    Attributes:
        base_url: the Docker daemon, e.g. ``unix:///var/run/docker.sock`` or ``tcp://host:2376``.
        image: image to run; default: the runner group's ``image``.
        network: Docker network to attach (default: the daemon's bridge).
        command: command to run instead of the user-data bootstrap (exec form).
        user_data_path: where the user-data file is written inside the container.
        host_gateway: add ``host.docker.internal`` pointing at the host.
        max_instances: refuse (capacity error) beyond this many containers with our prefix; 0 = no cap.
        timeout: seconds for each call to the daemon.
        tls_ca_cert, tls_client_cert, tls_client_key: TLS for a ``tcp://`` daemon (cert and key together).
    """

    base_url: str = "unix:///var/run/docker.sock"
    image: str | None = None
    network: str | None = None
    command: list[str] | None = None
    user_data_path: str = "/var/lib/ghrm/user-data"
    host_gateway: bool = True
    max_instances: int = Field(default=0, ge=0)
    timeout: float = Field(default=60.0, gt=0)
    tls_ca_cert: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    @field_validator("base_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(unix|tcp|ssh|http|https|npipe)://", value):
            raise ValueError(
                f"{value!r} is not a Docker daemon address like unix:///var/run/docker.sock or tcp://HOST:2376"
            )
        return value

    @field_validator("user_data_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or path.name in {"", ".", ".."}:
            raise ValueError(f"{value!r} must be an absolute file path inside the container")
        return value

    @field_validator("command")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must name a program (exec form, e.g. ['/opt/runner/start.sh'])")
        return value

    @model_validator(mode="after")
    def _cert_and_key(self) -> DockerSettings:
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("tls_client_cert and tls_client_key must be given together")
        return self


def _parse_time(text: str | None) -> float | None:
    """Docker's RFC 3339 timestamps carry nanoseconds, which ``fromisoformat`` does not take."""
    if not text:
        return None
    match = re.match(r"^(.*?T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return None
    base, frac, zone = match.groups()
    frac = (frac or ".0")[:7]
    zone = "+00:00" if zone == "Z" else zone
    try:
        return datetime.fromisoformat(f"{base}{frac}{zone}").timestamp()
    except ValueError:
        return None


class DockerBackend(Backend):
    """Runners as containers on one Docker daemon."""

    name: ClassVar[str] = "docker"
    settings_model: ClassVar[type[BackendSettings]] = DockerSettings
    settings: DockerSettings
    provider_errors: ClassVar[tuple[type[Exception], ...]] = (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        OSError,
    )

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        super().__init__(settings, prefix=prefix)
        self._lock = threading.Lock()
        self._docker: docker.DockerClient | None = None

    # ------------------------------------------------------------------ connection
    @property
    def client(self) -> docker.DockerClient:
        """The docker SDK client (connected on first use: it asks the daemon for its API version)."""
        with self._lock:
            if self._docker is None:
                tls: docker.tls.TLSConfig | bool = False
                s = self.settings
                if s.tls_ca_cert or s.tls_client_cert:
                    cert = (
                        (str(s.tls_client_cert), str(s.tls_client_key))
                        if s.tls_client_cert and s.tls_client_key
                        else None
                    )
                    tls = docker.tls.TLSConfig(
                        client_cert=cert,
                        ca_cert=str(s.tls_ca_cert) if s.tls_ca_cert else None,
                        verify=bool(s.tls_ca_cert),
                    )
                with self._errors(f"connecting to {s.base_url}"):
                    self._docker = docker.DockerClient(
                        base_url=s.base_url, timeout=int(s.timeout), tls=tls, version="auto"
                    )
            return self._docker

    def close(self) -> None:
        """Close the connection pool to the daemon."""
        with self._lock:
            if self._docker is not None:
                self._docker.close()
                self._docker = None

    def _translate(self, action: str, exc: Exception) -> BackendError:
        """Map docker SDK and transport errors onto the contract's error classes."""
        if isinstance(exc, docker.errors.ImageNotFound):
            return BackendError(
                f"docker: {action}: image not found on {self.settings.base_url} "
                f"(no registry is used: `docker import ROOTFS.tar NAME` first): {exc.explanation}"
            )
        if isinstance(exc, docker.errors.NotFound):
            return InstanceNotFound(f"docker: {action}: {exc.explanation}")
        if isinstance(exc, docker.errors.APIError):
            text = str(exc.explanation or exc)
            if _CAPACITY_PATTERNS.search(text):
                return CapacityError(f"docker: {action}: {text}")
            if exc.status_code in (401, 403):
                return AuthError(f"docker: {action}: the daemon refused us: {text}")
            return BackendError(f"docker: {action}: {text}")
        if isinstance(exc, requests.exceptions.SSLError):
            return AuthError(f"docker: {action}: TLS handshake with the daemon failed: {exc}")
        if (
            isinstance(exc, PermissionError)
            or isinstance(exc.__context__, PermissionError)
            or "Permission denied" in str(exc)
        ):
            return AuthError(
                f"docker: {action}: no permission to use {self.settings.base_url}: {exc}"
            )
        return BackendError(f"docker: {action}: daemon unreachable or failing: {exc}")

    # ------------------------------------------------------------------ contract
    def create(self, spec: InstanceSpec) -> Instance:
        """Create, fill and start a container for the runner."""
        s = self.settings
        image = s.image or spec.image
        self._check_room(s.max_instances, "containers")
        command = s.command or ["/bin/sh", "-c", _BOOTSTRAP]
        host_config: dict[str, Any] = {
            "mem_limit": spec.memory or None,
            "nano_cpus": int(spec.cpu * 1_000_000_000) or None,
            "privileged": False,
            "init": True,
            "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
        }
        if s.host_gateway:
            host_config["extra_hosts"] = {"host.docker.internal": "host-gateway"}
        if s.network:
            host_config["network"] = s.network
        started = time.monotonic()
        with self._errors(f"creating container {spec.name}"):
            container = self.client.containers.create(
                image,
                command,
                name=spec.name,
                hostname=spec.name[:63],
                labels=dict(spec.tags),
                environment={
                    "RUNNER_JITCONFIG": spec.jit_config,
                    "RUNNER_NAME": spec.name,
                    "GHRM_USER_DATA": s.user_data_path,
                },
                detach=True,
                **host_config,
            )
        try:
            with self._errors(f"starting container {spec.name}"):
                container.put_archive("/", self._user_data_tar(spec.user_data))
                container.start()
                container.reload()
        except BackendError:
            self._remove(container.name or spec.name)
            raise
        logger.info(
            "docker: created container %s (image %s, %d cpu, %d bytes) in %.2fs",
            spec.name,
            image,
            spec.cpu,
            spec.memory,
            time.monotonic() - started,
        )
        return self._instance(container)

    def get(self, name: str) -> Instance:
        """The container named ``name``; InstanceNotFound if there is none."""
        with self._errors(f"getting container {name}"):
            container = self.client.containers.get(name)
        return self._instance(container)

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Containers (running or not) whose name starts with the prefix and whose labels carry ``tags``."""
        wanted = self._wanted_prefix(prefix)
        filters: dict[str, Any] = {}
        if wanted:
            filters["name"] = re.escape(wanted)
        if tags:
            filters["label"] = [f"{k}={v}" for k, v in tags.items()]
        with self._errors("listing containers"):
            summaries = self.client.api.containers(all=True, filters=filters)
        found = []
        for summary in summaries:
            names = summary.get("Names") or []
            name = names[0].lstrip("/") if names else ""
            labels = dict(summary.get("Labels") or {})
            if self._matches(name, labels, prefix, tags):
                found.append(self._from_summary(name, labels, summary))
        return found

    def delete(self, name: str) -> None:
        """Remove the container (killing it if it runs); a missing container is not an error."""
        self._remove(name)

    def validate(self, group: Any) -> None:
        """A group fits when its image (or the configured one) is on the daemon."""
        image = self.settings.image or getattr(group, "image", None)
        if image:
            with self._errors(f"looking up image {image!r}"):
                self.client.images.get(image)

    # ------------------------------------------------------------------ helpers
    def _remove(self, name: str) -> None:
        try:
            with self._errors(f"removing container {name}"):
                self.client.api.remove_container(name, force=True, v=True)
        except InstanceNotFound:
            return
        except BackendError as exc:
            if "already in progress" in str(exc):
                return
            raise
        logger.info("docker: removed container %s", name)

    def _user_data_tar(self, user_data: str) -> bytes:
        """A tar holding the user-data at ``user_data_path`` (owner-only), with its parent directories."""
        path = PurePosixPath(self.settings.user_data_path)
        buf = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for parent in reversed(path.parents[:-1]):
                info = tarfile.TarInfo(str(parent).lstrip("/"))
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = int(now)
                tar.addfile(info)
            data = user_data.encode()
            info = tarfile.TarInfo(str(path).lstrip("/"))
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(now)
            tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def _from_summary(
        self, name: str, labels: dict[str, str], summary: Mapping[str, Any]
    ) -> Instance:
        """An Instance from one entry of the container list (no inspect call per container)."""
        networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
        address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
        created = summary.get("Created")
        return Instance(
            name=name,
            state=STATE_MAP.get(str(summary.get("State")), InstanceState.UNKNOWN),
            tags=labels,
            created_at=float(created) if isinstance(created, int | float) else None,
            address=address,
            backend=self.name,
            extra={
                "id": summary.get("Id"),
                "image": summary.get("Image"),
                "managed": TAG_PREFIX in labels,
            },
        )

    def _instance(self, container: Container) -> Instance:
        attrs = container.attrs
        state = attrs.get("State") or {}
        status = state.get("Status") if isinstance(state, dict) else str(state)
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
        labels = dict(container.labels or {})
        return Instance(
            name=container.name or "",
            state=STATE_MAP.get(str(status), InstanceState.UNKNOWN),
            tags=labels,
            created_at=_parse_time(attrs.get("Created")),
            address=address,
            backend=self.name,
            extra={
                "id": container.id,
                "image": (attrs.get("Config") or {}).get("Image"),
                "exit_code": state.get("ExitCode") if isinstance(state, dict) else None,
                "managed": TAG_PREFIX in labels,
            },
        )
