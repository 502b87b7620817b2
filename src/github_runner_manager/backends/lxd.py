"""LXD system containers as runner instances (pylxd, local unix socket or a remote LXD over TLS).

Each runner is an unprivileged container created from the runner image alias (built by
``scripts/build-runner-image.sh``) with CPU, memory and root disk limits, ``security.nesting`` so jobs
can run Docker inside, and everything the instance needs at first boot in ``user.*`` keys, which the
image's start unit reads through devlxd: ``user.jitconfig`` (the runner's JIT config) and
``user.user-data`` (the rendered start-up script). Tags live in ``user.ghrm-*`` keys, so ``list`` finds
the manager's instances -- orphans included -- without any database.

The denylist is an LXD network ACL (``ghrm-denylist``) with one egress ``reject`` rule per CIDR,
attached to the bridge with default actions ``allow``; it needs LXD's nftables firewall driver
(``scripts/start-lxd.sh`` makes sure of it).
"""

from __future__ import annotations

import builtins
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, suppress
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, ClassVar

# A missing pylxd surfaces as ModuleNotFoundError, which the registry turns into MissingDependencyError.
import pylxd
import requests
import tenacity
from pydantic import field_validator, model_validator
from pylxd import exceptions as lxd_exceptions
from pylxd.client import LXDSSLAdapter

from github_runner_manager.backends._common import parse_timestamp
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
    translated_errors,
)

logger = logging.getLogger(__name__)

#: LXD instance status → provider-neutral state.
STATE_MAP: dict[str, InstanceState] = {
    "Running": InstanceState.RUNNING,
    "Starting": InstanceState.PENDING,
    "Created": InstanceState.PENDING,
    "Pending": InstanceState.PENDING,
    "Stopping": InstanceState.STOPPED,
    "Stopped": InstanceState.STOPPED,
    "Freezing": InstanceState.STOPPED,
    "Frozen": InstanceState.STOPPED,
    "Thawed": InstanceState.RUNNING,
    "Aborting": InstanceState.ERROR,
    "Error": InstanceState.ERROR,
}

#: Config keys the manager owns on every instance.
KEY_JITCONFIG = "user.jitconfig"
KEY_USER_DATA = "user.user-data"
TAG_KEY_PREFIX = "user.ghrm-"
#: Tags whose name does not start with ``ghrm-`` are stored under this prefix.
OTHER_TAG_PREFIX = "user.ghrm-tag."
DENYLIST_ACL = "ghrm-denylist"

_CAPACITY_PATTERNS = re.compile(
    r"no space left|insufficient|not enough|cannot allocate|out of memory|quota|"
    r"exceed|reached maximum|limit.*reached|too many",
    re.IGNORECASE,
)
_AUTH_PATTERNS = re.compile(
    r"not authorized|unauthorized|forbidden|certificate|permission denied|trust", re.IGNORECASE
)
_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")


class LXDSettings(BackendSettings):
    """Settings of the ``lxd`` backend (``backends: {lxd: {...}}`` in the manager's config).

    Attributes:
        url: None for the local unix socket; ``https://host:8443`` for a remote LXD (then ``cert`` and
            ``key`` are the trusted client certificate) or ``unix:///path/unix.socket``.
        cert: client certificate file (PEM) for a remote LXD.
        key: client key file (PEM) for a remote LXD.
        verify: verify the server certificate (bool), or a CA bundle / server certificate path.
        project: LXD project (None: the default project).
        profile: profile the instances use (its root disk and NIC are overridden below).
        network: bridge the instances' eth0 attaches to; the denylist ACL is attached to it.
        storage_pool: pool of the root disk (None: the profile's root disk pool, else ``default``).
        timeout: seconds for every LXD API call.
        denylist_acl: name of the network ACL holding the denylist.
    """

    url: str | None = None
    cert: Path | None = None
    key: Path | None = None
    verify: bool | str = True
    project: str | None = None
    profile: str = "default"
    network: str = "lxdbr0"
    storage_pool: str | None = None
    timeout: float = 60.0
    denylist_acl: str = DENYLIST_ACL

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("https://", "unix://", "/")):
            raise ValueError("must be https://HOST:PORT, unix:///path/to/unix.socket or None")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> LXDSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (the client certificate and its key)")
        if self.url and self.url.startswith("https://") and self.cert is None:
            raise ValueError(
                "a remote https:// LXD needs cert and key (a trusted client certificate)"
            )
        return self


class _PinnedVerifySession(requests.Session):
    """A session whose ``verify`` setting wins over REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE.

    requests lets those variables override ``Session.verify`` (psf/requests#3829), which would
    silently replace a pinned LXD server certificate, or ``verify: false``, with the system CAs.
    """

    def merge_environment_settings(  # type: ignore[override]
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


def _is_busy(exc: BaseException) -> bool:
    """LXD refused because another operation (e.g. the instance's own stop) is running."""
    return isinstance(exc, BackendError) and "busy" in str(exc).lower()


def _image_missing(image: str) -> str:
    return (
        f"image alias {image!r} not found in LXD; build it first "
        "(github-runner-manager build-image, or scripts/build-runner-image.sh)"
    )


def _tag_to_key(tag: str) -> str:
    if tag.startswith("ghrm-"):
        return f"user.{tag}"
    return f"{OTHER_TAG_PREFIX}{tag}"


def _tags_from_config(config: Mapping[str, str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in config.items():
        if key.startswith(OTHER_TAG_PREFIX):
            tags[key[len(OTHER_TAG_PREFIX) :]] = value
        elif key.startswith(TAG_KEY_PREFIX):
            tags[key[len("user.") :]] = value
    return tags


def _size(value: int) -> str:
    mib = 1024**2
    return f"{value // mib}MiB" if value % mib == 0 else f"{value}B"


class LXDBackend(Backend):
    """Runner instances as LXD containers; safe to use from several threads (one client per thread)."""

    name: ClassVar[str] = "lxd"
    settings_model: ClassVar[type[BackendSettings]] = LXDSettings
    provider_errors: ClassVar[tuple[type[Exception], ...]] = (
        lxd_exceptions.LXDAPIException,
        requests.exceptions.ConnectionError,  # SSLError among them
        lxd_exceptions.ClientConnectionFailed,
        requests.exceptions.Timeout,
    )

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        super().__init__(settings, prefix=prefix)
        self._local = threading.local()
        self._profile_checked = False

    @property
    def lxd_settings(self) -> LXDSettings:
        """The validated settings with their concrete type."""
        assert isinstance(self.settings, LXDSettings)
        return self.settings

    # ------------------------------------------------------------------ connection and errors

    @property
    def client(self) -> pylxd.Client:
        """This thread's pylxd client (created on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._connect()
            self._local.client = client
        return client

    def _endpoint(self) -> str | None:
        url = self.lxd_settings.url
        if url and url.startswith("unix://"):
            return url[len("unix://") :]
        return url

    def _connect(self) -> pylxd.Client:
        settings = self.lxd_settings
        cert = (str(settings.cert), str(settings.key)) if settings.cert and settings.key else None
        where = settings.url or "the local unix socket"
        endpoint = self._endpoint()
        session = None
        if endpoint and endpoint.startswith("https://"):
            session = _PinnedVerifySession()
            session.cert = cert
            session.verify = settings.verify
            if isinstance(settings.verify, str):
                session.mount(endpoint, LXDSSLAdapter())
        try:
            return pylxd.Client(
                endpoint=endpoint,
                cert=cert,
                verify=settings.verify,
                timeout=settings.timeout,
                project=settings.project,
                session=session,
            )
        except requests.exceptions.SSLError as exc:
            raise AuthError(f"LXD at {where} failed the TLS handshake: {exc}") from None
        except lxd_exceptions.ClientConnectionFailed as exc:
            if re.search(r"ssl|certificate", str(exc), re.IGNORECASE):
                raise AuthError(f"LXD at {where} failed the TLS handshake: {exc}") from None
            raise BackendError(
                f"cannot reach LXD at {where}: {exc or 'connection failed'} "
                "(local: run scripts/start-lxd.sh)"
            ) from None

    def close(self) -> None:
        """Drop this thread's client (others are dropped with their threads)."""
        self._local.client = None

    def _errors(self, action: str, *, image: str | None = None) -> AbstractContextManager[None]:
        """A block whose pylxd/requests errors become contract errors (``image``: the alias used)."""
        return translated_errors(
            self.provider_errors, lambda exc: self._translate(action, exc, image=image)
        )

    def _translate(self, action: str, exc: Exception, *, image: str | None = None) -> BackendError:
        """Map pylxd/requests errors onto the backend error classes (dropping a broken client)."""
        if isinstance(exc, lxd_exceptions.NotFound):
            if image is not None and "image" in str(exc).lower():
                return BackendError(f"{action}: {_image_missing(image)}")
            return InstanceNotFound(f"{action}: {exc}")
        if isinstance(exc, lxd_exceptions.LXDAPIException):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            message = str(exc)
            if status in (401, 403) or _AUTH_PATTERNS.search(message):
                return AuthError(f"{action}: LXD refused: {message}")
            if image is not None and re.search(r"image.*not found|not found.*image", message, re.I):
                return BackendError(f"{action}: {_image_missing(image)}")
            if _CAPACITY_PATTERNS.search(message):
                return CapacityError(f"{action}: LXD is out of resources: {message}")
            return BackendError(f"{action}: {message}")
        if isinstance(exc, requests.exceptions.SSLError):
            return AuthError(f"{action}: TLS error talking to LXD: {exc}")
        if isinstance(
            exc, requests.exceptions.ConnectionError | lxd_exceptions.ClientConnectionFailed
        ):
            self.close()
            return BackendError(f"{action}: cannot reach LXD: {exc}")
        # What is left of provider_errors: a requests Timeout.
        return BackendError(f"{action}: LXD did not answer within {self.lxd_settings.timeout}s")

    # ------------------------------------------------------------------ contract

    def _check_profile(self) -> None:
        """Refuse a profile that would make runners privileged (checked once)."""
        if self._profile_checked:
            return
        with self._errors(f"reading profile {self.lxd_settings.profile!r}"):
            profile = self.client.profiles.get(self.lxd_settings.profile)
        if str(profile.config.get("security.privileged", "false")).lower() == "true":
            raise BackendConfigError(
                f"backends.lxd.profile: profile {self.lxd_settings.profile!r} sets security.privileged; "
                "runners must never be privileged"
            )
        self._profile_checked = True

    def _root_pool(self) -> str:
        if self.lxd_settings.storage_pool:
            return self.lxd_settings.storage_pool
        with self._errors(f"reading profile {self.lxd_settings.profile!r}"):
            profile = self.client.profiles.get(self.lxd_settings.profile)
        for device in profile.devices.values():
            if device.get("type") == "disk" and device.get("path") == "/" and device.get("pool"):
                return str(device["pool"])
        return "default"

    def instance_config(self, spec: InstanceSpec) -> dict[str, Any]:
        """The LXD instance-create request for a spec (pure; exposed for tests and debugging)."""
        if not _NAME_RE.match(spec.name):
            raise BackendError(f"instance name {spec.name!r} is not a valid LXD name")
        config: dict[str, str] = {
            "limits.cpu": str(spec.cpu),
            "limits.memory": _size(spec.memory),
            "security.nesting": "true",
            KEY_JITCONFIG: spec.jit_config,
            KEY_USER_DATA: spec.user_data,
        }
        for tag, value in spec.tags.items():
            config[_tag_to_key(tag)] = str(value)
        extra_config = spec.extra.get("lxd_config", {}) if spec.extra else {}
        for key, value in dict(extra_config).items():
            if key.startswith("security.privileged") or key.startswith("raw."):
                raise BackendConfigError(f"lxd_config.{key}: not allowed for runners")
            config[key] = str(value)
        return {
            "name": spec.name,
            "type": "container",
            "source": {"type": "image", "alias": spec.image},
            "profiles": [self.lxd_settings.profile],
            "config": config,
            "devices": {
                "root": {
                    "type": "disk",
                    "path": "/",
                    "pool": self._root_pool(),
                    "size": _size(spec.disk),
                },
                "eth0": {"type": "nic", "name": "eth0", "network": self.lxd_settings.network},
            },
        }

    def create(self, spec: InstanceSpec) -> Instance:
        """Create and start the container; on a failed start the half-made container is removed."""
        self._check_profile()
        request = self.instance_config(spec)
        logger.info(
            "lxd create name=%s group=%s image=%s cpu=%s memory=%s disk=%s",
            spec.name,
            spec.group,
            spec.image,
            spec.cpu,
            spec.memory,
            spec.disk,
        )
        with self._errors(f"creating {spec.name}", image=spec.image):
            instance = self.client.instances.create(request, wait=True)
        try:
            with self._errors(f"starting {spec.name}"):
                instance.start(wait=True)
        except BackendError:
            self.delete(spec.name)
            raise
        return self._to_instance(instance)

    def _to_instance(self, lxd_instance: Any, *, with_address: bool = False) -> Instance:
        config = dict(lxd_instance.config or {})
        address = None
        if with_address and lxd_instance.status == "Running":
            try:
                state = lxd_instance.state()
                for nic_name, nic in (state.network or {}).items():
                    if nic_name == "lo":
                        continue
                    for addr in nic.get("addresses", []):
                        if addr.get("family") == "inet" and addr.get("scope") == "global":
                            address = addr.get("address")
                            break
                    if address:
                        break
            except lxd_exceptions.LXDAPIException:
                address = None
        return Instance(
            name=lxd_instance.name,
            state=STATE_MAP.get(lxd_instance.status, InstanceState.UNKNOWN),
            tags=_tags_from_config(config),
            created_at=parse_timestamp(getattr(lxd_instance, "created_at", None)),
            address=address,
            backend=self.name,
            extra={
                "status": lxd_instance.status,
                "type": getattr(lxd_instance, "type", "container"),
                "image": config.get("volatile.base_image"),
                "location": getattr(lxd_instance, "location", None),
            },
        )

    def get(self, name: str) -> Instance:
        """The container with its IPv4 address (when running). Raises InstanceNotFound."""
        with self._errors(f"getting {name}"):
            lxd_instance = self.client.instances.get(name)
        return self._to_instance(lxd_instance, with_address=True)

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> builtins.list[Instance]:
        """Containers whose name starts with the prefix and whose ``user.ghrm-*`` keys carry the tags."""
        with self._errors("listing instances"):
            instances = self.client.instances.all()
        found: builtins.list[Instance] = []
        for lxd_instance in instances:
            config = dict(lxd_instance.config or {})
            if self._matches(lxd_instance.name, _tags_from_config(config), prefix, tags):
                found.append(self._to_instance(lxd_instance))
        return found

    def delete(self, name: str) -> None:
        """Stop (forced) and delete the container; a missing one is fine.

        A runner that has just powered itself off is briefly "busy running a stop operation" in LXD;
        that is retried for up to the API timeout instead of failing the delete.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_busy),
            wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
            stop=tenacity.stop_after_delay(self.lxd_settings.timeout),
            reraise=True,
        )
        try:
            retrying(self._delete_once, name)
        except InstanceNotFound:
            return

    def _delete_once(self, name: str) -> None:
        with self._errors(f"getting {name}"):
            lxd_instance = self.client.instances.get(name)
        logger.info("lxd delete name=%s status=%s", name, lxd_instance.status)
        if lxd_instance.status != "Stopped":
            try:
                with self._errors(f"stopping {name}"):
                    lxd_instance.stop(force=True, wait=True)
            except BackendError as exc:
                # It may have powered itself off meanwhile (a finished runner does).
                message = str(exc).lower()
                if isinstance(exc, InstanceNotFound) or (
                    "already stopped" not in message and "not running" not in message
                ):
                    raise
        with self._errors(f"deleting {name}"):
            lxd_instance.delete(wait=True)

    def validate(self, group: Any) -> None:
        """Check the profile and that the group's image alias exists in LXD."""
        self._check_profile()
        image = getattr(group, "image", None)
        if not image:
            return
        try:
            with self._errors(f"looking up image {image!r}", image=image):
                self.client.images.get_by_alias(image)
        except InstanceNotFound:
            raise BackendError(_image_missing(image)) from None

    # ------------------------------------------------------------------ denylist

    def apply_denylist(self, cidrs: Iterable[str | IPv4Network | IPv6Network]) -> None:
        """Make the bridge reject instance egress to each CIDR; everything else stays allowed.

        Creates or updates the network ACL, then attaches it to the bridge (keeping any other ACLs
        already attached) with default egress/ingress actions ``allow``. An empty list leaves the ACL
        attached with no rules. Idempotent.

        Raises:
            BackendConfigError: a CIDR is not a network.
            BackendError: LXD refused (e.g. its firewall driver is not nftables).
        """
        networks: builtins.list[str] = []
        for cidr in cidrs:
            try:
                networks.append(str(ip_network(str(cidr), strict=False)))
            except ValueError:
                raise BackendConfigError(f"denylist: {cidr!r} is not an IP network") from None
        acl_name = self.lxd_settings.denylist_acl
        body = {
            "description": "github-runner-manager denylist: runners may not reach these networks",
            "egress": [
                {
                    "action": "reject",
                    "destination": network,
                    "state": "enabled",
                    "description": f"denylist {network}",
                }
                for network in networks
            ],
            "ingress": [],
            "config": {},
        }
        acls = self.client.api["network-acls"]
        with self._errors(f"writing network ACL {acl_name}"):
            try:
                acls[acl_name].get()
                acls[acl_name].put(json=body)
            except lxd_exceptions.NotFound:
                acls.post(json={"name": acl_name, **body})
        bridge = self.lxd_settings.network
        with self._errors(f"attaching network ACL {acl_name} to {bridge}"):
            network = self.client.api.networks[bridge].get().json()["metadata"]
            attached = [a for a in network["config"].get("security.acls", "").split(",") if a]
            wanted = {
                "security.acls": ",".join(
                    [*attached, acl_name] if acl_name not in attached else attached
                ),
                "security.acls.default.egress.action": "allow",
                "security.acls.default.ingress.action": "allow",
            }
            if any(network["config"].get(k) != v for k, v in wanted.items()):
                self.client.api.networks[bridge].patch(json={"config": wanted})
        logger.info(
            "lxd denylist acl=%s bridge=%s networks=%s", acl_name, bridge, ",".join(networks)
        )

    def remove_denylist(self) -> None:
        """Detach the denylist ACL from the bridge and delete it; missing is fine."""
        acl_name = self.lxd_settings.denylist_acl
        bridge = self.lxd_settings.network
        with self._errors(f"detaching network ACL {acl_name} from {bridge}"):
            try:
                network = self.client.api.networks[bridge].get().json()["metadata"]
            except lxd_exceptions.NotFound:
                network = None
            if network is not None:
                config = dict(network["config"])
                attached = [a for a in config.get("security.acls", "").split(",") if a]
                if acl_name in attached:
                    attached.remove(acl_name)
                    if attached:
                        config["security.acls"] = ",".join(attached)
                    else:
                        for key in (
                            "security.acls",
                            "security.acls.default.egress.action",
                            "security.acls.default.ingress.action",
                        ):
                            config.pop(key, None)
                    self.client.api.networks[bridge].put(
                        json={"config": config, "description": network.get("description", "")}
                    )
        with self._errors(f"deleting network ACL {acl_name}"), suppress(lxd_exceptions.NotFound):
            self.client.api["network-acls"][acl_name].delete()
