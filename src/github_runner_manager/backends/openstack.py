"""OpenStack backend: one Nova server per runner, through openstacksdk's proxy layer.

Credentials come from a ``clouds.yaml`` entry (``clouds_yaml`` + ``cloud``) or from the settings
themselves (``auth_url``, ``username``, ``password``, ``project_name``, domains, region). The flavor
is the settings' or the group's, else the smallest of the cloud's own flavors that fits the group's
size; image and network may be names (resolved through Glance and Neutron once) or ids. User-data is
sent base64-encoded, as Nova wants; the manager's tags go into the server metadata, which is how
``list`` (Nova's ``name`` regex filter + the metadata) finds orphans.

Nova says "no room" in two ways, both capacity errors: 403 "Quota exceeded" when asked, and a server
that ends in ``ERROR`` with "No valid host" -- seen only when ``build_timeout`` > 0 makes ``create``
wait for the server to leave ``BUILD`` (the failed server is then deleted).
"""

from __future__ import annotations

import base64
import builtins
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from github_runner_manager.backends._common import ReadableFile, parse_timestamp
from github_runner_manager.backends.base import (
    AuthError,
    Backend,
    BackendConfigError,
    BackendError,
    BackendSettings,
    CapacityError,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    missing_dependency,
)
from github_runner_manager.units import MIB

try:
    import keystoneauth1.exceptions as ksa_exc
    import openstack
    import openstack.config
    import openstack.connection
    import openstack.exceptions as os_exc
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("openstack", "openstacksdk", extra="openstack") from _exc

logger = logging.getLogger(__name__)

#: Nova server statuses → provider-neutral states.
STATE_MAP: dict[str, InstanceState] = {
    "BUILD": InstanceState.PENDING,
    "REBUILD": InstanceState.PENDING,
    "REBOOT": InstanceState.PENDING,
    "HARD_REBOOT": InstanceState.PENDING,
    "MIGRATING": InstanceState.PENDING,
    "RESIZE": InstanceState.PENDING,
    "VERIFY_RESIZE": InstanceState.PENDING,
    "REVERT_RESIZE": InstanceState.PENDING,
    "PASSWORD": InstanceState.PENDING,
    "ACTIVE": InstanceState.RUNNING,
    "SHUTOFF": InstanceState.STOPPED,
    "STOPPED": InstanceState.STOPPED,
    "SUSPENDED": InstanceState.STOPPED,
    "PAUSED": InstanceState.STOPPED,
    "SHELVED": InstanceState.STOPPED,
    "SHELVED_OFFLOADED": InstanceState.STOPPED,
    "RESCUE": InstanceState.ERROR,
    "ERROR": InstanceState.ERROR,
    "DELETED": InstanceState.DELETING,
    "SOFT_DELETED": InstanceState.DELETING,
    "UNKNOWN": InstanceState.UNKNOWN,
}
_CAPACITY_TEXT = re.compile(
    r"quota exceeded|no valid host|exceeds? .*quota|over ?limit", re.IGNORECASE
)
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
#: Nova takes at most 65535 bytes of base64 user-data.
MAX_USER_DATA_B64 = 65535


class OpenStackSettings(BackendSettings):
    """``backends.openstack`` in the manager's configuration.

    Either ``clouds_yaml`` + ``cloud`` (the file is read as openstacksdk reads it), or ``auth_url`` +
    ``username`` + ``password`` + ``project_name`` (+ domains, ``region_name``).

    Attributes:
        flavor: flavor name or id for every group; default: the group's ``extra.flavor``, else the
            smallest of the cloud's flavors with the group's CPUs, memory and disk.
        image: image name or id; default: the group's ``image``.
        network: network name or id; default: Nova's ``auto`` allocation.
        key_name, security_groups, availability_zone: passed to Nova.
        max_instances: refuse (capacity error) beyond this many servers with our prefix; 0 = no cap.
        timeout: seconds per API call.
        build_timeout: seconds ``create`` waits for the server to leave BUILD (0: do not wait).
    """

    clouds_yaml: ReadableFile | None = None
    cloud: str | None = None
    auth_url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    project_name: str | None = None
    project_id: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    region_name: str | None = None
    interface: str = "public"
    flavor: str | None = None
    image: str | None = None
    network: str | None = None
    key_name: str | None = None
    security_groups: list[str] = Field(default_factory=list)
    availability_zone: str | None = None
    max_instances: int = Field(default=0, ge=0)
    timeout: float = Field(default=30.0, gt=0)
    build_timeout: float = Field(default=0.0, ge=0)

    @field_validator("auth_url")
    @classmethod
    def _auth_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(
                f"{value!r} is not a Keystone URL like https://keystone.example.com:5000/v3"
            )
        return value

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str) -> str:
        if value not in {"public", "internal", "admin"}:
            raise ValueError(f"{value!r} must be public, internal or admin")
        return value

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> OpenStackSettings:
        direct = [self.auth_url, self.username, self.password]
        if self.clouds_yaml or self.cloud:
            if not self.cloud:
                raise ValueError("clouds_yaml needs cloud: the name of the entry to use")
            if any(v is not None for v in direct):
                raise ValueError(
                    "give either clouds_yaml/cloud or auth_url/username/password, not both"
                )
        elif any(v is None for v in direct) or not (self.project_name or self.project_id):
            raise ValueError(
                "set clouds_yaml + cloud, or auth_url + username + password + project_name (or project_id)"
            )
        return self


class OpenStackBackend(Backend):
    """Runners as Nova servers."""

    name: ClassVar[str] = "openstack"
    settings_model: ClassVar[type[BackendSettings]] = OpenStackSettings
    settings: OpenStackSettings
    provider_errors: ClassVar[tuple[type[Exception], ...]] = (
        os_exc.SDKException,
        ksa_exc.ClientException,
    )

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        super().__init__(settings, prefix=prefix)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._resolved: dict[tuple[str, str], str] = {}
        self._flavors: builtins.list[Any] | None = None

    # ------------------------------------------------------------------ connection
    @property
    def conn(self) -> Any:
        """The ``openstack.connection.Connection`` (authenticates on first API call)."""
        with self._lock:
            if self._conn is None:
                s = self.settings
                with self._errors("connecting"):
                    if s.cloud:
                        files = [str(s.clouds_yaml)] if s.clouds_yaml else None
                        region = openstack.config.OpenStackConfig(config_files=files).get_one(
                            cloud=s.cloud, region_name=s.region_name, api_timeout=s.timeout
                        )
                        self._conn = openstack.connection.Connection(config=region)
                    else:
                        assert s.password is not None
                        self._conn = openstack.connect(
                            auth_url=s.auth_url,
                            username=s.username,
                            password=s.password.get_secret_value(),
                            project_name=s.project_name,
                            project_id=s.project_id,
                            user_domain_name=s.user_domain_name,
                            project_domain_name=s.project_domain_name,
                            region_name=s.region_name,
                            interface=s.interface,
                            api_timeout=s.timeout,
                            load_yaml_config=False,
                            load_envvars=False,
                        )
            return self._conn

    def close(self) -> None:
        """Close the connection's sessions."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    def _translate(self, action: str, exc: Exception) -> BackendError:
        """Map openstacksdk and keystoneauth errors onto the contract's error classes."""
        if isinstance(exc, os_exc.NotFoundException):
            return InstanceNotFound(f"openstack: {action}: {_message(exc)}")
        if isinstance(exc, os_exc.HttpException):
            text = f"openstack: {action}: {exc.status_code}: {_message(exc)}"
            if exc.status_code == 401:
                return AuthError(text)
            if exc.status_code in (403, 413) and _CAPACITY_TEXT.search(_message(exc)):
                return CapacityError(text)
            if exc.status_code == 403:
                return AuthError(text)
            return BackendError(text)
        if isinstance(
            exc, ksa_exc.Unauthorized | ksa_exc.AuthorizationFailure | ksa_exc.MissingAuthPlugin
        ):
            return AuthError(f"openstack: {action}: credentials rejected: {exc}")
        if isinstance(exc, ksa_exc.Forbidden):
            return AuthError(f"openstack: {action}: forbidden: {exc}")
        return BackendError(f"openstack: {action}: {exc}")

    # ------------------------------------------------------------------ contract
    def create(self, spec: InstanceSpec) -> Instance:
        """Boot a server for the runner; CapacityError on quota (or no valid host, when waiting)."""
        s = self.settings
        encoded = base64.b64encode(spec.user_data.encode()).decode()
        if len(encoded) > MAX_USER_DATA_B64:
            raise BackendError(
                f"openstack: user-data for {spec.name} is {len(encoded)} bytes in base64; Nova takes at most {MAX_USER_DATA_B64}"
            )
        self._check_room(s.max_instances, "servers")
        flavor_id = self._flavor(spec)
        image_id = self._resolve("image", s.image or str(spec.extra.get("image") or spec.image))
        networks: Any = "auto"
        if s.network:
            networks = [{"uuid": self._resolve("network", s.network)}]
        attrs: dict[str, Any] = {
            "name": spec.name,
            "flavor_id": flavor_id,
            "image_id": image_id,
            "networks": networks,
            "user_data": encoded,
            "metadata": {k[:255]: v[:255] for k, v in spec.tags.items()},
        }
        if s.key_name:
            attrs["key_name"] = s.key_name
        if s.security_groups:
            attrs["security_groups"] = [{"name": g} for g in s.security_groups]
        if s.availability_zone:
            attrs["availability_zone"] = s.availability_zone
        started = time.monotonic()
        with self._errors(f"creating server {spec.name}"):
            server = self.conn.compute.create_server(**attrs)
            server = self.conn.compute.get_server(server.id)
        if s.build_timeout:
            server = self._wait_built(server, spec.name)
        logger.info(
            "openstack: created %s as %s (flavor %s) in %.2fs",
            spec.name,
            server.id,
            flavor_id,
            time.monotonic() - started,
        )
        return self._instance(server)

    def get(self, name: str) -> Instance:
        """The server named exactly ``name`` (newest if several); InstanceNotFound otherwise."""
        found = self._servers(f"^{re.escape(name)}$")
        found = [server for server in found if server.name == name]
        if not found:
            raise InstanceNotFound(f"openstack: no server named {name!r}")
        return self._instance(max(found, key=lambda server: server.created_at or ""))

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Servers whose name starts with the prefix and whose metadata carries ``tags``."""
        servers = self._servers(f"^{re.escape(self._wanted_prefix(prefix))}")
        return self._select(map(self._instance, servers), prefix, tags)

    def delete(self, name: str) -> None:
        """Delete every server named ``name``; none is not an error."""
        servers = [
            server for server in self._servers(f"^{re.escape(name)}$") if server.name == name
        ]
        for server in servers:
            with self._errors(f"deleting server {name}"):
                self.conn.compute.delete_server(server.id, ignore_missing=True)
            logger.info("openstack: deleted %s (%s)", name, server.id)

    def validate(self, group: Any) -> None:
        """A group fits when a flavor is set or one of the cloud's flavors is big enough."""
        if not self.settings.flavor:
            self._smallest_flavor(int(group.cpu), int(group.memory), int(getattr(group, "disk", 0)))

    # ------------------------------------------------------------------ helpers
    def _servers(self, name_regex: str) -> builtins.list[Any]:
        with self._errors("listing servers"):
            return list(self.conn.compute.servers(details=True, name=name_regex))

    def _wait_built(self, server: Any, name: str) -> Any:
        deadline = time.monotonic() + self.settings.build_timeout
        delay = 0.1
        while server.status == "BUILD" and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.05, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
            with self._errors(f"waiting for server {name}"):
                server = self.conn.compute.get_server(server.id)
        if server.status == "ERROR":
            fault = (
                (server.fault or {}).get("message", "") if isinstance(server.fault, dict) else ""
            )
            with self._errors(f"removing failed server {name}"):
                self.conn.compute.delete_server(server.id, ignore_missing=True)
            text = f"openstack: server {name} failed to build: {fault or 'ERROR'}"
            if _CAPACITY_TEXT.search(fault):
                raise CapacityError(text)
            raise BackendError(text)
        return server

    def _resolve(self, kind: str, name_or_id: str) -> str:
        """An image or network id for a name or id (looked up once per name)."""
        if _UUID.match(name_or_id):
            return name_or_id
        key = (kind, name_or_id)
        if key not in self._resolved:
            try:
                with self._errors(f"looking up {kind} {name_or_id!r}"):
                    if kind == "image":
                        found = self.conn.image.find_image(name_or_id, ignore_missing=False)
                    else:
                        found = self.conn.network.find_network(name_or_id, ignore_missing=False)
            except InstanceNotFound:
                raise BackendError(
                    f"openstack: no {kind} named {name_or_id!r} (backends.openstack.{kind})"
                ) from None
            self._resolved[key] = str(found.id)
        return self._resolved[key]

    def _flavor(self, spec: InstanceSpec) -> str:
        wanted = self.settings.flavor or spec.extra.get("flavor")
        if wanted:
            key = ("flavor", str(wanted))
            if key not in self._resolved:
                try:
                    with self._errors(f"looking up flavor {wanted!r}"):
                        found = self.conn.compute.find_flavor(str(wanted), ignore_missing=False)
                except InstanceNotFound:
                    raise BackendError(
                        f"openstack: no flavor {wanted!r} (backends.openstack.flavor)"
                    ) from None
                self._resolved[key] = str(found.id)
            return self._resolved[key]
        return self._smallest_flavor(spec.cpu, spec.memory, spec.disk)

    def _smallest_flavor(self, cpu: int, memory: int, disk: int) -> str:
        if self._flavors is None:
            with self._errors("listing flavors"):
                self._flavors = sorted(
                    self.conn.compute.flavors(details=True),
                    key=lambda f: (f.vcpus or 0, f.ram or 0, f.disk or 0),
                )
        for flavor in self._flavors:
            if (
                (flavor.vcpus or 0) >= cpu
                and (flavor.ram or 0) * MIB >= memory
                and (not disk or not flavor.disk or flavor.disk * 1024 * MIB >= disk)
            ):
                return str(flavor.id)
        raise BackendConfigError(
            f"backends.openstack.flavor: no flavor of this cloud has {cpu} CPUs and {memory // MIB} MiB; "
            "set flavor, or lower the group's size"
        )

    def _instance(self, server: Any) -> Instance:
        address = None
        for entries in (server.addresses or {}).values():
            for entry in entries:
                if entry.get("addr") and entry.get("version", 4) == 4:
                    address = entry["addr"]
                    break
            if address:
                break
        fault = server.fault if isinstance(server.fault, dict) else {}
        return Instance(
            name=server.name,
            state=STATE_MAP.get(str(server.status), InstanceState.UNKNOWN),
            tags={str(k): str(v) for k, v in (server.metadata or {}).items()},
            created_at=parse_timestamp(str(server.created_at or "")),
            address=address,
            backend=self.name,
            extra={
                "id": server.id,
                "flavor": (server.flavor.original_name if server.flavor else None),
                "fault": fault.get("message"),
            },
        )


def _message(exc: Any) -> str:
    return str(getattr(exc, "details", None) or getattr(exc, "message", None) or exc)
