"""AWS EC2 backend: one instance per runner, through boto3.

The instance type comes from the group's size through a flavor table (the smallest entry with at
least the CPUs and memory asked for) unless the settings or the group name one. User-data goes to
``RunInstances`` (boto3 base64-encodes it); every instance and its volumes carry the manager's tags
plus ``Name``, so ``list`` (``DescribeInstances`` filtered by tags) finds orphans. Instances shut
down by the runner terminate themselves (``InstanceInitiatedShutdownBehavior=terminate``), and
``ClientToken`` makes a retried create return the same instance instead of a second one.
Terminated instances, which EC2 still shows for a while, count as gone.
"""

from __future__ import annotations

import builtins
import logging
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from github_runner_manager.backends._common import SizedType, by_size, size_table, smallest_fit
from github_runner_manager.backends.base import (
    AuthError,
    Backend,
    BackendError,
    BackendSettings,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    error_for_codes,
    missing_dependency,
)
from github_runner_manager.units import GIB

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("aws", "boto3", extra="aws") from _exc

logger = logging.getLogger(__name__)

#: EC2 instance states → provider-neutral states (``terminated`` instances are not listed).
STATE_MAP: dict[str, InstanceState] = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPED,
    "stopped": InstanceState.STOPPED,
    "shutting-down": InstanceState.DELETING,
    "terminated": InstanceState.DELETING,
}
_LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

#: EC2 error codes that mean "the credentials or their permissions are wrong".
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RequestExpired",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
        "Blocked",
    }
)
#: EC2 error codes that mean "no room now": another backend may take the runner.
CAPACITY_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientFreeAddressesInSubnet",
        "InsufficientAddressCapacity",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "VolumeLimitExceeded",
        "ResourceLimitExceeded",
    }
)
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})

#: EC2 accepts at most 16 KB of user-data before base64.
MAX_USER_DATA = 16 * 1024


class InstanceType(SizedType):
    """One row of the flavor table: an EC2 instance type and what it offers."""


#: Default flavor table (x86_64, general purpose), cheapest first for each size.
DEFAULT_INSTANCE_TYPES = size_table(
    InstanceType,
    ("t3.micro", 2, 1),
    ("t3.small", 2, 2),
    ("t3.medium", 2, 4),
    ("t3.large", 2, 8),
    ("t3.xlarge", 4, 16),
    ("t3.2xlarge", 8, 32),
    ("m6i.4xlarge", 16, 64),
    ("m6i.8xlarge", 32, 128),
    ("m6i.12xlarge", 48, 192),
    ("m6i.16xlarge", 64, 256),
    ("m6i.24xlarge", 96, 384),
    ("m6i.32xlarge", 128, 512),
)


class AWSSettings(BackendSettings):
    """``backends.aws`` in the manager's configuration.

    Credentials: ``access_key_id`` + ``secret_access_key`` (+ ``session_token``), or ``profile``,
    or neither (boto3's default chain: environment, instance role, ...).

    Attributes:
        region: EC2 region.
        endpoint_url: another EC2 endpoint (a VPC endpoint; moto in tests).
        subnet_id, security_group_ids, key_name: where and how instances are attached.
        ami: image id; default: the group's ``image`` (an ``ami-`` id, or an AMI name owned by ``ami_owners``).
        instance_type: one type for every group; default: chosen from ``instance_types`` by size.
        instance_types: the flavor table.
        max_instances: refuse (capacity error) beyond this many instances with our prefix; 0 = no cap.
        timeout: seconds for connecting and for each response; max_attempts: boto3 retries.
    """

    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    profile: str | None = None
    subnet_id: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    key_name: str | None = None
    ami: str | None = None
    ami_owners: list[str] = Field(default_factory=lambda: ["self"])
    instance_type: str | None = None
    instance_types: list[InstanceType] = Field(default_factory=lambda: list(DEFAULT_INSTANCE_TYPES))
    max_instances: int = Field(default=0, ge=0)
    timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", value):
            raise ValueError(f"{value!r} is not an AWS region like us-east-1")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(
                f"{value!r} is not an http(s) URL like https://ec2.us-east-1.amazonaws.com"
            )
        return value

    @field_validator("subnet_id")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("subnet-"):
            raise ValueError(f"{value!r} is not a subnet id (subnet-...)")
        return value

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not v.startswith("sg-")]
        if bad:
            raise ValueError(f"{bad!r}: security group ids look like sg-0123456789abcdef0")
        return value

    @field_validator("ami")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("ami-"):
            raise ValueError(f"{value!r} is not an AMI id (ami-...)")
        return value

    @field_validator("instance_types")
    @classmethod
    def _table(cls, value: list[InstanceType]) -> list[InstanceType]:
        return by_size(value, empty="the flavor table needs at least one instance type")

    @model_validator(mode="after")
    def _credentials(self) -> AWSSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be given together")
        if self.profile and self.access_key_id:
            raise ValueError("give either profile or access_key_id/secret_access_key, not both")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        return self


_SESSIONS: dict[str | None, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(profile: str | None) -> Any:
    """One boto3 session per profile for the process: clients made from it share the loaded EC2 model.

    Creating a client from a session is not thread-safe in boto3, hence the lock around both.
    """
    with _SESSIONS_LOCK:
        if profile not in _SESSIONS:
            _SESSIONS[profile] = boto3.session.Session(profile_name=profile)
        return _SESSIONS[profile]


def pick_instance_type(table: list[InstanceType], cpu: int, memory: int) -> str:
    """The first (smallest) type in the sorted table with at least ``cpu`` and ``memory``.

    Raises:
        BackendConfigError: no type is big enough (the message names the setting to extend).
    """
    return smallest_fit(
        table,
        cpu,
        memory,
        setting="backends.aws.instance_types",
        what="instance type",
        override="instance_type",
    )


class AWSBackend(Backend):
    """Runners as EC2 instances."""

    name: ClassVar[str] = "aws"
    settings_model: ClassVar[type[BackendSettings]] = AWSSettings
    settings: AWSSettings
    provider_errors: ClassVar[tuple[type[Exception], ...]] = (
        botocore.exceptions.ClientError,
        botocore.exceptions.BotoCoreError,
    )

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        super().__init__(settings, prefix=prefix)
        self._lock = threading.Lock()
        self._client: Any = None
        self._image_cache: dict[str, tuple[float, str, str | None]] = {}

    @property
    def ec2(self) -> Any:
        """The boto3 EC2 client (thread-safe; created on first use)."""
        with self._lock:
            if self._client is None:
                s = self.settings
                credentials: dict[str, Any] = {}
                if s.access_key_id and s.secret_access_key:
                    credentials["aws_access_key_id"] = s.access_key_id
                    credentials["aws_secret_access_key"] = s.secret_access_key.get_secret_value()
                    if s.session_token:
                        credentials["aws_session_token"] = s.session_token.get_secret_value()
                with self._errors("opening an EC2 session"):
                    session = _session(s.profile)
                    self._client = session.client(
                        "ec2",
                        region_name=s.region,
                        endpoint_url=s.endpoint_url,
                        config=botocore.config.Config(
                            connect_timeout=s.timeout,
                            read_timeout=s.timeout,
                            retries={"max_attempts": s.max_attempts, "mode": "standard"},
                            user_agent_extra="github-runner-manager",
                        ),
                        **credentials,
                    )
            return self._client

    def close(self) -> None:
        """Drop the client (boto3 closes its pool when collected)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    def _translate(self, action: str, exc: Exception) -> BackendError:
        """Map boto3/botocore errors onto the contract's error classes, on their codes."""
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            return error_for_codes(
                [code],
                f"aws: {action}: {code}: {error.get('Message', '')}",
                capacity=CAPACITY_CODES,
                auth=AUTH_CODES,
                not_found=NOT_FOUND_CODES,
            )
        if isinstance(
            exc,
            botocore.exceptions.NoCredentialsError
            | botocore.exceptions.PartialCredentialsError
            | botocore.exceptions.ProfileNotFound,
        ):
            return AuthError(f"aws: {action}: {exc}")
        return BackendError(f"aws: {action}: {exc}")

    # ------------------------------------------------------------------ contract
    def create(self, spec: InstanceSpec) -> Instance:
        """Run one instance for the runner; CapacityError when EC2 has no room or quota."""
        s = self.settings
        data = spec.user_data.encode()
        if len(data) > MAX_USER_DATA:
            raise BackendError(
                f"aws: user-data for {spec.name} is {len(data)} bytes; EC2 takes at most {MAX_USER_DATA}"
            )
        self._check_room(s.max_instances, "instances")
        instance_type = str(
            spec.extra.get("instance_type")
            or s.instance_type
            or pick_instance_type(s.instance_types, spec.cpu, spec.memory)
        )
        image_id, root_device = self._image(spec)
        tags = [{"Key": "Name", "Value": spec.name}] + [
            {"Key": k, "Value": v} for k, v in spec.tags.items() if k != "Name"
        ]
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": spec.user_data,
            "ClientToken": spec.name[:64],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if s.subnet_id:
            params["SubnetId"] = s.subnet_id
        if s.security_group_ids:
            params["SecurityGroupIds"] = list(s.security_group_ids)
        if s.key_name:
            params["KeyName"] = s.key_name
        if spec.disk and root_device:
            params["BlockDeviceMappings"] = [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": max(1, -(-spec.disk // GIB)),
                        "DeleteOnTermination": True,
                        "VolumeType": "gp3",
                    },
                }
            ]
        started = time.monotonic()
        with self._errors(f"running an instance for {spec.name}"):
            reply = self.ec2.run_instances(**params)
        raw = reply["Instances"][0]
        logger.info(
            "aws: created %s as %s (%s, %s) in %.2fs",
            spec.name,
            raw.get("InstanceId"),
            instance_type,
            image_id,
            time.monotonic() - started,
        )
        return self._instance(raw)

    def get(self, name: str) -> Instance:
        """The live instance named ``name`` (newest if EC2 has several); InstanceNotFound otherwise."""
        found = self._describe([{"Name": "tag:Name", "Values": [name]}])
        found = [raw for raw in found if self._name(raw) == name]
        if not found:
            raise InstanceNotFound(f"aws: no live instance named {name!r}")
        if len(found) > 1:
            logger.warning(
                "aws: %d live instances are named %s; reporting the newest", len(found), name
            )
        newest = max(found, key=lambda raw: raw.get("LaunchTime") or 0)
        return self._instance(newest)

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Live instances whose ``Name`` starts with the prefix and which carry ``tags``."""
        wanted = self._wanted_prefix(prefix)
        filters = [{"Name": "tag:Name", "Values": [_wildcard_escape(wanted) + "*"]}]
        filters += [
            {"Name": f"tag:{k}", "Values": [_wildcard_escape(v)]} for k, v in (tags or {}).items()
        ]
        return self._select(map(self._instance, self._describe(filters)), prefix, tags)

    def delete(self, name: str) -> None:
        """Terminate every live instance named ``name``; none is not an error."""
        ids = [
            raw["InstanceId"]
            for raw in self._describe([{"Name": "tag:Name", "Values": [name]}])
            if self._name(raw) == name and raw.get("State", {}).get("Name") != "shutting-down"
        ]
        if not ids:
            return
        try:
            with self._errors(f"terminating {name}"):
                self.ec2.terminate_instances(InstanceIds=ids)
        except InstanceNotFound:
            return
        logger.info("aws: terminated %s (%s)", name, ", ".join(ids))

    def validate(self, group: Any) -> None:
        """A group fits when the flavor table has a type for its size (or one is set)."""
        if not self.settings.instance_type:
            pick_instance_type(self.settings.instance_types, int(group.cpu), int(group.memory))

    # ------------------------------------------------------------------ helpers
    def _describe(self, filters: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
        filters = [*filters, {"Name": "instance-state-name", "Values": _LIVE_STATES}]
        found: builtins.list[dict[str, Any]] = []
        with self._errors("describing instances"):
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    found.extend(reservation.get("Instances", []))
        return found

    def _image(self, spec: InstanceSpec) -> tuple[str, str | None]:
        """The AMI id and its root device name: from the settings, or the group's image id or name."""
        wanted = self.settings.ami or str(spec.extra.get("ami") or spec.image)
        cached = self._image_cache.get(wanted)
        if cached and time.monotonic() - cached[0] < 300:
            return cached[1], cached[2]
        with self._errors(f"looking up image {wanted!r}"):
            if wanted.startswith("ami-"):
                images = self.ec2.describe_images(ImageIds=[wanted]).get("Images", [])
            else:
                images = self.ec2.describe_images(
                    Owners=list(self.settings.ami_owners),
                    Filters=[{"Name": "name", "Values": [wanted]}],
                ).get("Images", [])
        if not images:
            raise BackendError(
                f"aws: no AMI {wanted!r} (set backends.aws.ami or the group's image to an AMI id or name)"
            )
        image = max(images, key=lambda i: i.get("CreationDate") or "")
        result = (str(image["ImageId"]), image.get("RootDeviceName"))
        self._image_cache[wanted] = (time.monotonic(), *result)
        return result

    @staticmethod
    def _name(raw: Mapping[str, Any]) -> str:
        return next((t["Value"] for t in raw.get("Tags", []) if t.get("Key") == "Name"), "")

    def _instance(self, raw: Mapping[str, Any]) -> Instance:
        tags = {t["Key"]: t.get("Value", "") for t in raw.get("Tags", [])}
        name = tags.pop("Name", "")
        state = str(raw.get("State", {}).get("Name", ""))
        launched = raw.get("LaunchTime")
        return Instance(
            name=name,
            state=STATE_MAP.get(state, InstanceState.UNKNOWN),
            tags=tags,
            created_at=launched.timestamp() if isinstance(launched, datetime) else None,
            address=raw.get("PrivateIpAddress"),
            backend=self.name,
            extra={
                "instance_id": raw.get("InstanceId"),
                "instance_type": raw.get("InstanceType"),
                "image_id": raw.get("ImageId"),
                "public_address": raw.get("PublicIpAddress"),
                "state_reason": (raw.get("StateReason") or {}).get("Message"),
            },
        )


def _wildcard_escape(value: str) -> str:
    """EC2 filter values treat ``*`` and ``?`` as wildcards; a backslash escapes them."""
    return re.sub(r"([*?\\])", r"\\\1", value)
