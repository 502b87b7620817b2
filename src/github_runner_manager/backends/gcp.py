"""Google Compute Engine backend: one instance per runner, through google-cloud-compute.

The machine type comes from the group's size through a table (smallest fit) unless the settings or
the group name one. The runner's user-data goes into the instance metadata as ``user-data`` (read by
cloud-init); a small ``startup-script`` (no secret in it) runs that user-data on images without
cloud-init. Tags become GCE labels -- lowercased and cut to GCE's rules, so the exact tags also go
into the metadata item ``ghrm-tags`` -- which is how ``list`` finds orphans.

Every insert and delete is a zone operation, waited for with a ``ZoneOperationsClient`` built with
the same credentials and endpoint as the instances client (an ``endpoint`` such as an emulator's
would otherwise be ignored by the poller). Quota and resource-pool exhaustion, whether refused at
once (HTTP 403 ``quotaExceeded``) or reported by the operation (``QUOTA_EXCEEDED``,
``ZONE_RESOURCE_POOL_EXHAUSTED``), are capacity errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, field_validator

from github_runner_manager.backends._common import (
    ReadableFile,
    SizedType,
    by_size,
    parse_timestamp,
    size_table,
    smallest_fit,
)
from github_runner_manager.backends.base import (
    AuthError,
    Backend,
    BackendError,
    BackendSettings,
    CapacityError,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    error_for_codes,
    missing_dependency,
)
from github_runner_manager.units import GIB

try:
    import google.auth
    import google.auth.exceptions
    import requests.exceptions
    from google.api_core import exceptions as gexc
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("gcp", "google-cloud-compute", extra="gcp") from _exc

logger = logging.getLogger(__name__)

#: GCE instance statuses → provider-neutral states.
STATE_MAP: dict[str, InstanceState] = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "STOPPING": InstanceState.STOPPED,
    "SUSPENDING": InstanceState.STOPPED,
    "SUSPENDED": InstanceState.STOPPED,
    "STOPPED": InstanceState.STOPPED,
    "TERMINATED": InstanceState.STOPPED,
    "REPAIRING": InstanceState.ERROR,
}
#: Operation error codes meaning "no room or quota now".
CAPACITY_CODES = frozenset(
    {
        "QUOTA_EXCEEDED",
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "REGION_RESOURCE_POOL_EXHAUSTED",
        "RESOURCE_POOL_EXHAUSTED",
        "RESOURCE_EXHAUSTED",
    }
)
#: Operation error codes meaning "the credentials may not do this".
AUTH_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED", "FORBIDDEN"})
#: HTTP error reasons (``errors[].reason``) meaning quota.
CAPACITY_REASONS = frozenset({"quotaExceeded", "QUOTA_EXCEEDED", "resourceExhausted"})

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
SCOPES = ["https://www.googleapis.com/auth/compute"]
TAGS_METADATA_KEY = "ghrm-tags"

#: Runs the user-data on images without cloud-init; carries no secret itself.
STARTUP_SCRIPT = """\
#!/bin/sh
# github-runner-manager: cloud-init reads the user-data itself; without it, run the user-data script.
command -v cloud-init >/dev/null 2>&1 && exit 0
ud=$(mktemp)
curl -sf -H 'Metadata-Flavor: Google' -o "$ud" \\
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/user-data || exit 1
case "$(head -c 2 "$ud")" in '#!') chmod 0700 "$ud"; exec "$ud" ;; esac
echo "github-runner-manager: user-data is not a script and cloud-init is missing" >&2
exit 1
"""


class MachineType(SizedType):
    """One row of the machine type table."""


#: Default machine types (x86_64, general purpose), smallest first.
DEFAULT_MACHINE_TYPES = size_table(
    MachineType,
    ("e2-small", 2, 2),
    ("e2-medium", 2, 4),
    ("e2-standard-2", 2, 8),
    ("e2-standard-4", 4, 16),
    ("e2-standard-8", 8, 32),
    ("e2-standard-16", 16, 64),
    ("e2-standard-32", 32, 128),
    ("n2-standard-48", 48, 192),
    ("n2-standard-64", 64, 256),
    ("n2-standard-80", 80, 320),
    ("n2-standard-96", 96, 384),
    ("n2-standard-128", 128, 512),
)


class GCPSettings(BackendSettings):
    """``backends.gcp`` in the manager's configuration.

    Credentials: ``credentials_file`` (a service account key or any file google-auth reads); else,
    with ``endpoint`` set (an emulator), anonymous; else Application Default Credentials.

    Attributes:
        project, zone: where instances live.
        endpoint: another Compute API endpoint (``http://127.0.0.1:PORT`` for the emulator).
        machine_type: one type for every group; default: chosen from ``machine_types`` by size.
        image: boot image (``projects/debian-cloud/global/images/family/debian-12``, or a name in the
            project); default: the group's ``image``.
        network, subnetwork: where the NIC goes; external_ip: give it a public address (egress).
        disk_type: boot disk type; network_tags: firewall tags; service_account: its email.
        spot: use Spot VMs (deleted when preempted).
        max_instances: refuse (capacity error) beyond this many instances with our prefix; 0 = no cap.
        timeout: seconds per API call; operation_timeout: seconds to wait for an insert/delete.
    """

    project: str = Field(min_length=1)
    zone: str
    endpoint: str | None = None
    credentials_file: ReadableFile | None = None
    machine_type: str | None = None
    machine_types: list[MachineType] = Field(default_factory=lambda: list(DEFAULT_MACHINE_TYPES))
    image: str | None = None
    network: str = "global/networks/default"
    subnetwork: str | None = None
    external_ip: bool = True
    disk_type: str = "pd-balanced"
    network_tags: list[str] = Field(default_factory=list)
    service_account: str | None = None
    spot: bool = False
    max_instances: int = Field(default=0, ge=0)
    timeout: float = Field(default=30.0, gt=0)
    operation_timeout: float = Field(default=300.0, gt=0)

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][-a-z0-9.:]{4,61}[a-z0-9]", value):
            raise ValueError(f"{value!r} is not a GCP project id like my-project-123")
        return value

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", value):
            raise ValueError(f"{value!r} is not a GCE zone like us-central1-a")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError(f"{value!r} is not an endpoint like https://compute.googleapis.com")
        return value.rstrip("/") if value else value

    @field_validator("machine_types")
    @classmethod
    def _machine_types(cls, value: list[MachineType]) -> list[MachineType]:
        return by_size(value, empty="the machine type table needs at least one entry")


def label_key(key: str) -> str:
    """A GCE label key for a tag key: lowercase, ``[a-z0-9_-]``, starts with a letter, at most 63."""
    text = re.sub(r"[^a-z0-9_-]", "_", key.lower())
    if not text or not text[0].isalpha():
        text = "k" + text
    return _cut(text)


def label_value(value: str) -> str:
    """A GCE label value for a tag value: lowercase, ``[a-z0-9_-]``, at most 63 characters."""
    return _cut(re.sub(r"[^a-z0-9_-]", "_", value.lower()))


def _cut(text: str) -> str:
    """Cut to 63 characters, keeping the result distinct with a short hash of the whole."""
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:54]}-{digest}"


def _filter_regex(value: str) -> str:
    """A value quoted for an ``eq`` (RE2 full match) term of a GCE list filter."""
    return re.sub(r"([\\.^$|?*+()\[\]{}\"-])", r"\\\1", value)


class GCPBackend(Backend):
    """Runners as Compute Engine instances in one zone."""

    name: ClassVar[str] = "gcp"
    settings_model: ClassVar[type[BackendSettings]] = GCPSettings
    settings: GCPSettings
    provider_errors: ClassVar[tuple[type[Exception], ...]] = (
        gexc.GoogleAPIError,
        google.auth.exceptions.GoogleAuthError,
        requests.exceptions.RequestException,
    )

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        super().__init__(settings, prefix=prefix)
        self._lock = threading.Lock()
        self._instances_client: Any = None
        self._operations_client: Any = None

    # ------------------------------------------------------------------ clients
    def _clients(self) -> tuple[Any, Any]:
        """The instances client and its operation poller, on the same credentials and endpoint."""
        with self._lock:
            if self._instances_client is None:
                s = self.settings
                with self._errors("loading credentials"):
                    if s.credentials_file is not None:
                        credentials, _ = google.auth.load_credentials_from_file(
                            str(s.credentials_file), scopes=SCOPES
                        )
                    elif s.endpoint:
                        credentials = AnonymousCredentials()
                    else:
                        credentials, _ = google.auth.default(scopes=SCOPES)
                options = ClientOptions(api_endpoint=s.endpoint) if s.endpoint else None
                self._instances_client = compute_v1.InstancesClient(
                    credentials=credentials, client_options=options
                )
                self._operations_client = compute_v1.ZoneOperationsClient(
                    credentials=credentials, client_options=options
                )
            return self._instances_client, self._operations_client

    @property
    def instances_client(self) -> Any:
        """The ``compute_v1.InstancesClient`` this backend uses."""
        return self._clients()[0]

    def close(self) -> None:
        """Close both clients' transports."""
        with self._lock:
            for client in (self._instances_client, self._operations_client):
                if client is not None:
                    client.transport.close()
            self._instances_client = self._operations_client = None

    def _translate(self, action: str, exc: Exception) -> BackendError:
        """Map Google API and auth errors onto the contract's error classes."""
        if isinstance(exc, gexc.NotFound):
            return InstanceNotFound(f"gcp: {action}: {exc.message}")
        if isinstance(exc, gexc.Unauthorized):
            return AuthError(f"gcp: {action}: credentials rejected: {exc.message}")
        if isinstance(exc, gexc.Forbidden | gexc.TooManyRequests) and _is_quota(exc):
            return CapacityError(f"gcp: {action}: {exc.message}")
        if isinstance(exc, gexc.Forbidden):
            return AuthError(f"gcp: {action}: permission denied: {exc.message}")
        if isinstance(exc, gexc.TooManyRequests):
            return BackendError(f"gcp: {action}: rate limited: {exc.message}")
        if isinstance(exc, gexc.GoogleAPICallError):
            return BackendError(f"gcp: {action}: {exc.code} {exc.message}")
        if isinstance(exc, google.auth.exceptions.GoogleAuthError):
            return AuthError(f"gcp: {action}: credentials unusable: {exc}")
        return BackendError(f"gcp: {action}: {exc}")

    def _wait(self, operation: Any, action: str) -> None:
        """Wait for a zone operation to be DONE and raise what its error means."""
        _, operations = self._clients()
        s = self.settings
        deadline = time.monotonic() + s.operation_timeout
        op = operation
        while op.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(
                    f"gcp: {action}: operation {op.name} not done after {s.operation_timeout}s"
                )
            with self._errors(f"{action}: waiting for {op.name}"):
                op = operations.wait(
                    project=s.project,
                    zone=s.zone,
                    operation=op.name,
                    timeout=min(remaining, s.timeout),
                )
        errors = list(op.error.errors) if op.error else []
        if not errors:
            return
        raise error_for_codes(
            {e.code for e in errors},
            f"gcp: {action}: " + "; ".join(f"{e.code}: {e.message}" for e in errors),
            capacity=CAPACITY_CODES,
            auth=AUTH_CODES,
            not_found={"RESOURCE_NOT_FOUND"},
        )

    # ------------------------------------------------------------------ contract
    def create(self, spec: InstanceSpec) -> Instance:
        """Insert an instance and wait for the operation; CapacityError on quota or pool exhaustion."""
        s = self.settings
        if not NAME_RE.match(spec.name):
            raise BackendError(
                f"gcp: {spec.name!r} is not a valid instance name (lowercase letters, digits, '-', at most 63)"
            )
        self._check_room(s.max_instances, "instances")
        machine = str(
            spec.extra.get("machine_type") or s.machine_type or self._pick(spec.cpu, spec.memory)
        )
        image = s.image or str(spec.extra.get("image") or spec.image)
        if "/" not in image:
            image = f"projects/{s.project}/global/images/{image}"
        disk = compute_v1.AttachedDisk(
            boot=True,
            auto_delete=True,
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image=image,
                disk_type=f"zones/{s.zone}/diskTypes/{s.disk_type}",
                **({"disk_size_gb": max(10, -(-spec.disk // GIB))} if spec.disk else {}),
            ),
        )
        nic = compute_v1.NetworkInterface(network=s.network)
        if s.subnetwork:
            nic.subnetwork = s.subnetwork
        if s.external_ip:
            nic.access_configs = [
                compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
            ]
        items = [
            compute_v1.Items(key="user-data", value=spec.user_data),
            compute_v1.Items(key="startup-script", value=STARTUP_SCRIPT),
            compute_v1.Items(
                key=TAGS_METADATA_KEY, value=json.dumps(dict(spec.tags), sort_keys=True)
            ),
        ]
        resource = compute_v1.Instance(
            name=spec.name,
            machine_type=f"zones/{s.zone}/machineTypes/{machine}",
            labels={label_key(k): label_value(v) for k, v in spec.tags.items()},
            metadata=compute_v1.Metadata(items=items),
            disks=[disk],
            network_interfaces=[nic],
        )
        if s.network_tags:
            resource.tags = compute_v1.Tags(items=list(s.network_tags))
        if s.service_account:
            resource.service_accounts = [
                compute_v1.ServiceAccount(
                    email=s.service_account,
                    scopes=["https://www.googleapis.com/auth/cloud-platform"],
                )
            ]
        if s.spot:
            resource.scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT", instance_termination_action="DELETE"
            )
        client, _ = self._clients()
        started = time.monotonic()
        action = f"inserting instance {spec.name}"
        with self._errors(action):
            operation = client.insert_unary(
                request=compute_v1.InsertInstanceRequest(
                    project=s.project,
                    zone=s.zone,
                    instance_resource=resource,
                    # The same request id for the same name: a retried insert is not a second instance.
                    request_id=str(
                        uuid.uuid5(uuid.NAMESPACE_URL, f"ghrm:{s.project}:{s.zone}:{spec.name}")
                    ),
                ),
                timeout=s.timeout,
            )
        self._wait(operation, action)
        logger.info(
            "gcp: created %s (%s, %s) in %.2fs",
            spec.name,
            machine,
            image,
            time.monotonic() - started,
        )
        return self.get(spec.name)

    def get(self, name: str) -> Instance:
        """The instance named ``name``; InstanceNotFound if there is none."""
        client, _ = self._clients()
        s = self.settings
        with self._errors(f"getting instance {name}"):
            raw = client.get(project=s.project, zone=s.zone, instance=name, timeout=s.timeout)
        return self._instance(raw)

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Instances whose name starts with the prefix and which carry ``tags``."""
        terms = [f'(name eq "{_filter_regex(self._wanted_prefix(prefix))}.*")']
        terms += [
            f'(labels.{label_key(k)} eq "{_filter_regex(label_value(v))}")'
            for k, v in (tags or {}).items()
        ]
        client, _ = self._clients()
        s = self.settings
        request = compute_v1.ListInstancesRequest(
            project=s.project, zone=s.zone, filter=" ".join(terms), max_results=500
        )
        with self._errors("listing instances"):
            return self._select(
                map(self._instance, client.list(request=request, timeout=s.timeout)), prefix, tags
            )

    def delete(self, name: str) -> None:
        """Delete the instance and wait until it is gone; a missing instance is not an error."""
        client, _ = self._clients()
        s = self.settings
        action = f"deleting instance {name}"
        try:
            with self._errors(action):
                operation = client.delete_unary(
                    project=s.project, zone=s.zone, instance=name, timeout=s.timeout
                )
            self._wait(operation, action)
        except InstanceNotFound:
            return
        logger.info("gcp: deleted %s", name)

    def validate(self, group: Any) -> None:
        """A group fits when the table has a machine type for its size (or one is set)."""
        if not self.settings.machine_type:
            self._pick(int(group.cpu), int(group.memory))

    # ------------------------------------------------------------------ helpers
    def _pick(self, cpu: int, memory: int) -> str:
        return smallest_fit(
            self.settings.machine_types,
            cpu,
            memory,
            setting="backends.gcp.machine_types",
            what="machine type",
            override="machine_type",
        )

    def _instance(self, raw: Any) -> Instance:
        metadata = {item.key: item.value for item in raw.metadata.items} if raw.metadata else {}
        try:
            tags = {
                str(k): str(v) for k, v in json.loads(metadata.get(TAGS_METADATA_KEY, "")).items()
            }
        except (ValueError, AttributeError):
            tags = dict(raw.labels)
        nics = list(raw.network_interfaces)
        address = nics[0].network_i_p if nics and nics[0].network_i_p else None
        public = None
        if nics and nics[0].access_configs:
            public = nics[0].access_configs[0].nat_i_p or None
        return Instance(
            name=raw.name,
            state=STATE_MAP.get(raw.status, InstanceState.UNKNOWN),
            tags=tags,
            created_at=parse_timestamp(raw.creation_timestamp),
            address=address,
            backend=self.name,
            extra={
                "id": str(raw.id) if raw.id else None,
                "machine_type": raw.machine_type.rsplit("/", 1)[-1] if raw.machine_type else None,
                "labels": dict(raw.labels),
                "public_address": public,
                "status_message": raw.status_message or None,
            },
        )


def _is_quota(exc: Any) -> bool:
    """True when a 403/429 from the API says a quota is exhausted."""
    reasons = {str(e.get("reason", "")) for e in (exc.errors or []) if isinstance(e, dict)}
    if exc.reason:
        reasons.add(str(exc.reason))
    return bool(reasons & CAPACITY_REASONS) or "QUOTA_EXCEEDED" in str(exc.message)
