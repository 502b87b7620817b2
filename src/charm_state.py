# Copyright 2025 the github-runner authors.
# See LICENSE file for licensing details.

"""The charm's whole input (Juju config, secrets, relation data) as one validated `CharmState`.

Everything the charm knows about what the operator wants is read here and nowhere else. Invalid
input raises `CharmConfigInvalidError` whose message names each offending option and says what it
accepts, so it can be shown to the operator as a blocked status unchanged. No message ever
contains a secret value.

`CharmState.from_config` is a pure function of its arguments (no `ops`), so tests can compute
the expected verdict for a config independently of the charm.
"""

from __future__ import annotations

import ipaddress
import json
import platform
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast, get_args
from urllib.parse import SplitResult, urlsplit, urlunsplit

import ops
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from github_runner_manager.units import format_duration, format_size, parse_duration, parse_size

BackendName = Literal["lxd", "docker", "aws", "gcp", "openstack", "vsphere", "fake"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
RunnerStorage = Literal["juju-storage", "memory"]
RUNNER_STORAGES: tuple[str, ...] = get_args(RunnerStorage)
RedisSource = Literal["option", "relation", "embedded"]

GITHUB_API_URL = "https://api.github.com"
#: How a secret shows in `to_manager_config(redact=True)` (the same mark as pydantic's SecretStr).
REDACTED = "**********"
#: The runner group made from the single-group options (`virtual-machines`, `vm-*`, `labels`).
DEFAULT_GROUP_NAME = "default"
MIN_MEMORY = 512 * 1024**2
MIN_DISK = 1024**3
MAX_RECONCILE_MINUTES = 1440
MAX_IMAGE_BUILD_HOURS = 720

#: Options in config.yaml order; error messages are reported in this order.
OPTIONS: tuple[str, ...] = (
    "path",
    "token",
    "webhook-secret",
    "virtual-machines",
    "vm-cpu",
    "vm-memory",
    "vm-disk",
    "labels",
    "group",
    "reconcile-interval",
    "backend",
    "backend-config",
    "runner-groups",
    "max-total-runners",
    "per-owner-max-runners",
    "denylist",
    "dockerhub-mirror",
    "runner-storage",
    "base-image",
    "image-build-interval",
    "redis-url",
    "test-mode",
)
#: The value Juju gives each option when the operator has not set it (mirrors config.yaml;
#: a unit test keeps the two equal).
DEFAULTS: Mapping[str, Any] = {
    "path": "",
    "token": "",
    "webhook-secret": "",
    "virtual-machines": 1,
    "vm-cpu": 2,
    "vm-memory": "7GiB",
    "vm-disk": "10GiB",
    "labels": "",
    "group": "default",
    "reconcile-interval": 10,
    "backend": "lxd",
    "backend-config": "",
    "runner-groups": "",
    "max-total-runners": 0,
    "per-owner-max-runners": 0,
    "denylist": "",
    "dockerhub-mirror": "",
    "runner-storage": "juju-storage",
    "base-image": "debian:bookworm",
    "image-build-interval": 6,
    "redis-url": "",
    "test-mode": False,
}

_SECRET_ID = re.compile(r"^secret:(//[A-Za-z0-9-]+/)?[0-9a-z]{20}$")
_ORG = r"[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}"
_PATH_RE = re.compile(
    rf"^(?:{_ORG}|{_ORG}/(?!\.\.?$)[A-Za-z0-9._-]{{1,100}}|enterprise:[A-Za-z0-9](?:-?[A-Za-z0-9]){{0,99}})$"
)
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=:-]{0,99}$")
_GROUP_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
_BASE_IMAGE_RE = re.compile(r"^(debian|ubuntu):([a-z0-9][a-z0-9.]{0,31})$")
_REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "unix")
_ARCH_LABELS = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
_MAX_QUOTED = 64


class CharmConfigInvalidError(Exception):
    """The operator's input cannot be used; the message says which option and what to set.

    Attributes:
        msg: every problem found, `"; "`-joined, each starting with the option's name.
        errors: the problems one by one.
    """

    def __init__(self, msg: str, errors: tuple[str, ...] = ()):
        super().__init__(msg)
        self.msg = msg
        self.errors = errors or (msg,)


class SecretUnreadableError(Exception):
    """A Juju secret id names a secret that is missing or not granted to this application."""


class RunnerGroupConfig(BaseModel):
    """One kind of runner (a "flavor"): what it looks like and how many to keep.

    Sizes are bytes and durations seconds; `to_manager_config` renders them for the manager.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    labels: tuple[str, ...]
    backends: tuple[BackendName, ...] = Field(min_length=1)
    image: str
    cpu: int = Field(ge=1)
    memory: int = Field(ge=1)
    disk: int = Field(ge=1)
    min_idle: int = Field(ge=0)
    max_runners: int = Field(ge=0)
    runner_group: str
    max_lifetime: float | None = None

    def to_manager_config(self) -> dict[str, Any]:
        """This group in the manager's config-file form (see DESIGN.md)."""
        group: dict[str, Any] = {"name": self.name, "labels": list(self.labels)}
        if len(self.backends) == 1:
            group["backend"] = self.backends[0]
        else:
            group["backends"] = list(self.backends)
        group.update(
            image=self.image,
            cpu=self.cpu,
            memory=format_size(self.memory),
            disk=format_size(self.disk),
            min_idle=self.min_idle,
            max_runners=self.max_runners,
            runner_group=self.runner_group,
        )
        if self.max_lifetime is not None:
            group["max_lifetime"] = format_duration(self.max_lifetime)
        return group


class CharmState(BaseModel):
    """Everything the operator asked for, validated; the only input the workload gets.

    Secrets are `SecretStr` (or hidden from `repr`), so logging a state never leaks them.

    Attributes:
        paths: where runners register: orgs, `owner/repo`s or `enterprise:NAME`s.
        token: the GitHub token.
        webhook_secret: the webhook HMAC secret; None when webhooks are not used.
        runner_groups: the kinds of runner; one group named "default" unless `runner-groups` is set.
        backend: the default backend (the `backend` option).
        backend_config: settings per backend name, from the `backend-config` secret; every
            backend any group uses has an entry (maybe empty).
        reconcile_interval: seconds between full reconciliations.
        max_total_runners: cap across all groups; 0 means none.
        per_owner_max_runners: cap per repository owner; 0 means none.
        denylist: normalised CIDRs runners may not reach.
        dockerhub_mirror: registry mirror URL or None.
        runner_storage: `juju-storage` or `memory`.
        base_image: `distro:release` the image is built from.
        image: name of the runner image built from `base_image`.
        image_build_interval: seconds between image rebuilds; 0 means no scheduled rebuild.
        redis_url: the shared Redis, None for an embedded one (or while the relation is pending).
        redis_source: where `redis_url` came from.
        test_mode: plain-text secrets were allowed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    paths: tuple[str, ...] = Field(min_length=1)
    token: SecretStr
    webhook_secret: SecretStr | None = None
    runner_groups: tuple[RunnerGroupConfig, ...] = Field(min_length=1)
    backend: BackendName = "lxd"
    backend_config: dict[str, dict[str, Any]] = Field(default_factory=dict, repr=False)
    reconcile_interval: float = Field(default=600.0, gt=0)
    max_total_runners: int = Field(default=0, ge=0)
    per_owner_max_runners: int = Field(default=0, ge=0)
    denylist: tuple[str, ...] = ()
    dockerhub_mirror: str | None = Field(default=None, repr=False)
    runner_storage: RunnerStorage = "juju-storage"
    base_image: str = "debian:bookworm"
    image: str = "github-runner-debian-bookworm"
    image_build_interval: float = Field(default=6 * 3600.0, ge=0)
    redis_url: str | None = Field(default=None, repr=False)
    redis_source: RedisSource = "embedded"
    test_mode: bool = False

    @property
    def redis_pending(self) -> bool:
        """The `redis` relation exists but has not published where Redis is yet."""
        return self.redis_source == "relation" and self.redis_url is None

    @classmethod
    def from_charm(cls, charm: ops.CharmBase, installed_runner_storage: str | None) -> CharmState:
        """Read the charm's config, secrets and `redis` relation into a validated state.

        Args:
            charm: the charm whose model is read.
            installed_runner_storage: the `runner-storage` recorded at install, if any.

        Raises:
            CharmConfigInvalidError: the input is not usable; the message says what to fix.
        """

        def read_secret(secret_id: str) -> Mapping[str, str]:
            try:
                return charm.model.get_secret(id=secret_id).get_content(refresh=True)
            except ops.SecretNotFoundError as exc:
                raise SecretUnreadableError("was not found") from exc
            except ops.ModelError as exc:
                raise SecretUnreadableError("cannot be read by this application") from exc

        redis_data: dict[str, str] | None = None
        relation = charm.model.get_relation("redis")
        if relation is not None:
            redis_data = {}
            if relation.app is not None:
                redis_data.update(relation.data[relation.app])
            for unit in sorted(relation.units, key=lambda u: u.name):
                for key, value in relation.data[unit].items():
                    redis_data.setdefault(key, value)
        return cls.from_config(
            dict(charm.config),
            read_secret=read_secret,
            redis_relation=redis_data,
            installed_runner_storage=installed_runner_storage,
            app_name=charm.app.name,
        )

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        read_secret: Callable[[str], Mapping[str, str]],
        redis_relation: Mapping[str, str] | None = None,
        installed_runner_storage: str | None = None,
        app_name: str = "github-runner",
        arch: str | None = None,
    ) -> CharmState:
        """Validate a Juju config (plus what it points at) into a `CharmState`.

        Args:
            config: option name → value, as Juju gives it; missing options take their defaults.
            read_secret: returns a Juju secret's content by id; raises `SecretUnreadableError`.
            redis_relation: the `redis` relation's merged app and unit data; None when not related.
            installed_runner_storage: the `runner-storage` recorded at install, if any.
            app_name: the application's name, for `juju grant-secret` hints.
            arch: the runners' architecture label; default: this machine's.

        Raises:
            CharmConfigInvalidError: every problem found, each naming its option.
        """
        return _Parser(
            config, read_secret, redis_relation, installed_runner_storage, app_name, arch
        ).parse()

    def to_manager_config(self, *, redact: bool = False) -> dict[str, Any]:
        """The manager's config-file mapping (DESIGN.md, "The manager's config file").

        Secrets are inline (`github.token`, `webhook.secret`, `backends.*`, the Redis URL's
        password) so the caller can write the file with mode 0600; `redact=True` replaces every
        secret value with `REDACTED` (`**********`), for display.
        """
        github: dict[str, Any] = {
            "url": GITHUB_API_URL,
            "paths": list(self.paths),
            "token": REDACTED if redact else self.token.get_secret_value(),
        }
        config: dict[str, Any] = {"github": github}
        if self.webhook_secret is not None:
            config["webhook"] = {
                "secret": REDACTED if redact else self.webhook_secret.get_secret_value()
            }
        # No URL: the manager's default, the redis-server on this unit.
        config["redis"] = {}
        if self.redis_url is not None:
            config["redis"]["url"] = redact_url(self.redis_url) if redact else self.redis_url
        config["reconcile_interval"] = format_duration(self.reconcile_interval)
        config["max_total_runners"] = self.max_total_runners
        config["per_owner_max_runners"] = self.per_owner_max_runners
        config["denylist"] = list(self.denylist)
        config["runner_groups"] = [group.to_manager_config() for group in self.runner_groups]
        config["backends"] = {
            name: _redact_values(settings) if redact else _plain(settings)
            for name, settings in self.backend_config.items()
        }
        return config


def redact_url(url: str) -> str:
    """The URL with any password replaced by `REDACTED`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return REDACTED
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{user}:{REDACTED}@{host}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _redact_values(value: Any) -> Any:
    """Keep a mapping's shape, replace every leaf with `REDACTED`."""
    if isinstance(value, Mapping):
        return {key: _redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_values(item) for item in value]
    return REDACTED


def _plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (safe to YAML-dump and to mutate)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _quote(value: Any) -> str:
    """An operator's value in double quotes, one line, shortened when long."""
    text = str(value)
    if len(text) > _MAX_QUOTED:
        text = text[: _MAX_QUOTED - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _units_message(exc: Exception, value: Any) -> str:
    """A units.py message with the operator's value re-quoted safely (one line, short)."""
    return str(exc).replace(f'"{value}"', _quote(value), 1)


def _size(value: Any, minimum: int, minimum_text: str) -> int:
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ValueError(_units_message(exc, value)) from None
    except ArithmeticError:  # a number too large to be a size at all
        raise ValueError(f"{_quote(value)} is not a size like 7GiB") from None
    if size < minimum:
        raise ValueError(f"{_quote(value)} is too small; runners need at least {minimum_text}")
    return size


def _whole_number(value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_quote(value)} is not a whole number")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"{minimum} or more"
        raise ValueError(f"{value} is out of range; use a whole number {bound}")
    return value


def _comma_list(value: Any) -> list[str]:
    return [item.strip() for item in str(value).split(",") if item.strip()]


def _labels(items: list[str], base: tuple[str, ...]) -> tuple[str, ...]:
    """Base labels first, then the given ones; duplicates (case-insensitive) dropped."""
    result: list[str] = []
    seen: set[str] = set()
    for label in (*base, *items):
        if not _LABEL_RE.match(label):
            raise ValueError(
                f"{_quote(label)} is not a label (up to 100 letters, digits and . _ - = :)"
            )
        if label.lower() not in seen:
            seen.add(label.lower())
            result.append(label)
    return tuple(result)


def _github_group(value: Any) -> str:
    text = str(value).strip() if isinstance(value, str | int) else ""
    if not text:
        raise ValueError('is empty; name a GitHub runner group (usually "default")')
    if len(text) > 100 or any(ord(char) < 32 for char in text):
        raise ValueError(f"{_quote(value)} is not a GitHub runner group name")
    return text


def _backend(value: Any) -> BackendName:
    if value not in BACKENDS:
        raise ValueError(f"{_quote(value)} is not one of {', '.join(BACKENDS)}")
    return cast(BackendName, value)


def _yaml(text: str, *, show_problem: bool) -> Any:
    """Load YAML; the error says where it broke (and what, unless the text is secret)."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
        problem = f": {exc.problem}" if show_problem and exc.problem else ""
        raise ValueError(f"is not valid YAML{where}{problem}") from None
    except Exception:  # whatever the loader trips on, the text is at fault
        raise ValueError("is not valid YAML") from None


def _redis_url(value: str) -> str:
    shown = _quote(redact_url(value))
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{shown} is not a valid URL") from None
    schemes = ", ".join(f"{scheme}://" for scheme in _REDIS_SCHEMES[:-1])
    schemes += f" or {_REDIS_SCHEMES[-1]}://"
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError(f"{shown} is not a {schemes} URL")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"{shown} has no socket path, like unix:///run/redis/redis.sock")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{shown} has no host, like redis://10.0.0.5:6379/0")
    return value


_GROUP_KEYS = (
    "name",
    "labels",
    "min-idle",
    "max-runners",
    "cpu",
    "memory",
    "disk",
    "image",
    "group",
    "max-lifetime",
    "backend",
    "backends",
)


class _Parser:
    """One validation run; collects every problem rather than stopping at the first."""

    def __init__(
        self,
        config: Mapping[str, Any],
        read_secret: Callable[[str], Mapping[str, str]],
        redis_relation: Mapping[str, str] | None,
        installed_runner_storage: str | None,
        app_name: str,
        arch: str | None,
    ):
        self.config = config
        self.read_secret = read_secret
        self.redis_relation = redis_relation
        self.installed_runner_storage = installed_runner_storage
        self.app_name = app_name
        machine = arch or platform.machine().lower()
        self.arch = _ARCH_LABELS.get(machine, machine) or "x64"
        self.errors: list[tuple[int, str]] = []

    def raw(self, option: str) -> Any:
        return self.config.get(option, DEFAULTS[option])

    def error(self, option: str, message: str) -> None:
        order = OPTIONS.index(option) if option in OPTIONS else len(OPTIONS)
        self.errors.append((order, f"{option}: {message}"))

    def check(self, option: str, parse: Callable[[Any], Any]) -> Any:
        """Parse one option's value; on failure record the message and return None."""
        try:
            return parse(self.raw(option))
        except ValueError as exc:
            self.error(option, str(exc))
            return None

    def parse(self) -> CharmState:
        test_mode = self.raw("test-mode")
        if not isinstance(test_mode, bool):
            self.error("test-mode", f"{_quote(test_mode)} is not true or false")
            test_mode = False
        self.test_mode = test_mode

        paths = self.check("path", self._paths)
        token = self._secret_option("token", ("token", "value"), required=True)
        webhook = self._secret_option("webhook-secret", ("webhook-secret", "value"), required=False)
        backend = self.check("backend", _backend)
        group_option = self.check("group", _github_group)
        reconcile = self.check(
            "reconcile-interval", lambda v: _whole_number(v, 1, MAX_RECONCILE_MINUTES)
        )
        max_total = self.check("max-total-runners", lambda v: _whole_number(v, 0))
        per_owner = self.check("per-owner-max-runners", lambda v: _whole_number(v, 0))
        denylist = self.check("denylist", self._denylist)
        mirror = self.check("dockerhub-mirror", self._mirror)
        storage = self.check("runner-storage", self._runner_storage)
        base_image = self.check("base-image", self._base_image)
        image_interval = self.check(
            "image-build-interval", lambda v: _whole_number(v, 0, MAX_IMAGE_BUILD_HOURS)
        )
        redis_url, redis_source = self._redis()
        backend_config = self._backend_config()
        image = None
        if base_image is not None:
            image = "github-runner-" + base_image.replace(":", "-")

        groups_text = self.raw("runner-groups")
        groups: tuple[RunnerGroupConfig, ...] | None = None
        if isinstance(groups_text, str) and groups_text.strip():
            groups = self._runner_groups(groups_text, backend, group_option, image)
        elif not isinstance(groups_text, str):
            self.error("runner-groups", f"{_quote(groups_text)} is not a YAML list")
        else:
            groups = self._single_group(backend, group_option, image)

        if groups is not None and backend_config is not None and backend is not None:
            backend_config = self._per_backend(backend_config, backend, groups)

        if self.errors:
            messages = tuple(message for _, message in sorted(self.errors, key=lambda e: e[0]))
            raise CharmConfigInvalidError("; ".join(messages), messages)
        assert paths is not None and token is not None and groups is not None and image
        return CharmState(
            paths=paths,
            token=SecretStr(token),
            webhook_secret=SecretStr(webhook) if webhook else None,
            runner_groups=groups,
            backend=backend,
            backend_config=backend_config or {},
            reconcile_interval=reconcile * 60.0,
            max_total_runners=max_total,
            per_owner_max_runners=per_owner,
            denylist=denylist,
            dockerhub_mirror=mirror,
            runner_storage=storage,
            base_image=base_image,
            image=image,
            image_build_interval=image_interval * 3600.0,
            redis_url=redis_url,
            redis_source=redis_source,
            test_mode=test_mode,
        )

    # -- single options -------------------------------------------------------------------------

    @staticmethod
    def _paths(value: Any) -> tuple[str, ...]:
        items = _comma_list(value)
        if not items:
            raise ValueError("is required; set it to an org, owner/repo or enterprise:NAME")
        for item in items:
            if not _PATH_RE.match(item):
                raise ValueError(
                    f"{_quote(item)} is neither an org, owner/repo nor enterprise:NAME"
                )
        return tuple(dict.fromkeys(items))

    @staticmethod
    def _denylist(value: Any) -> tuple[str, ...]:
        networks: list[str] = []
        for item in _comma_list(value):
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{_quote(item)} is not a CIDR like 10.0.0.0/8") from None
        return tuple(dict.fromkeys(networks))

    @staticmethod
    def _mirror(value: Any) -> str | None:
        text = str(value).strip()
        if not text:
            return None
        shown = _quote(redact_url(text))
        try:
            parts = urlsplit(text)
            _ = parts.port
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or any(char.isspace() for char in text)
        ):
            raise ValueError(f"{shown} is not an http(s) URL like https://mirror.example.com")
        return text

    def _runner_storage(self, value: Any) -> str:
        if value not in RUNNER_STORAGES:
            raise ValueError(f"{_quote(value)} is not one of {', '.join(RUNNER_STORAGES)}")
        was = self.installed_runner_storage
        if was is not None and was != value:
            raise ValueError(f"cannot change after deploy (was {was}, now {value}); set it back")
        return str(value)

    @staticmethod
    def _base_image(value: Any) -> str:
        text = str(value).strip()
        if not _BASE_IMAGE_RE.match(text):
            raise ValueError(
                f"{_quote(value)} is not an image like debian:bookworm, ubuntu:noble or ubuntu:24.04"
            )
        return text

    # -- secrets ----------------------------------------------------------------------------------

    def _secret_content(self, option: str, secret_id: str) -> Mapping[str, str] | None:
        if not _SECRET_ID.match(secret_id):
            self.error(
                option,
                f"{_quote(secret_id)} is not a Juju secret id like secret:d0h8l3ub2ik2pno6kv6g",
            )
            return None
        try:
            return self.read_secret(secret_id)
        except SecretUnreadableError as exc:
            self.error(
                option,
                f"secret {secret_id} {exc}; check `juju secrets` and run "
                f"`juju grant-secret <secret> {self.app_name}`",
            )
            return None

    def _plain_refused(self, option: str) -> None:
        self.error(
            option,
            "a plain value is not accepted; store it with `juju add-secret` and set "
            f"{option} to the secret id (plain values only with test-mode=true)",
        )

    def _secret_option(self, option: str, keys: tuple[str, ...], *, required: bool) -> str | None:
        """A secret string: from a Juju secret's `keys[0]` (or `value`), or plain in test mode."""
        value = self.raw(option)
        text = value.strip() if isinstance(value, str) else ""
        if not isinstance(value, str):
            self.error(option, "must be a Juju secret id like secret:...")
            return None
        if not text:
            if required:
                self.error(
                    option,
                    "is required; store it with `juju add-secret` and set it to the secret id",
                )
            return None
        if not text.startswith("secret:"):
            if self.test_mode:
                return text
            self._plain_refused(option)
            return None
        content = self._secret_content(option, text)
        if content is None:
            return None
        for key in keys:
            secret = content.get(key)
            if isinstance(secret, str) and secret.strip():
                return secret.strip()
        wanted = " or ".join(f'"{key}"' for key in keys)
        self.error(option, f"secret {text} has no non-empty key {wanted}")
        return None

    def _backend_config(self) -> dict[str, Any] | None:
        """The `backend-config` mapping (not yet split per backend); None on error."""
        option = "backend-config"
        value = self.raw(option)
        text = value.strip() if isinstance(value, str) else ""
        if not isinstance(value, str):
            self.error(option, "must be a Juju secret id like secret:...")
            return None
        if not text:
            return {}
        if text.startswith("secret:"):
            content = self._secret_content(option, text)
            if content is None:
                return None
            if "config" not in content:
                return dict(content)
            source, document = f'secret {text} key "config"', content["config"]
        elif self.test_mode:
            source, document = "the value", text
        else:
            self._plain_refused(option)
            return None
        try:
            loaded = _yaml(document, show_problem=False)
        except ValueError as exc:
            self.error(option, f"{source} {exc}")
            return None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict) or not all(isinstance(key, str) for key in loaded):
            self.error(option, f"{source} is not a YAML mapping of settings (key: value)")
            return None
        return loaded

    def _per_backend(
        self, settings: dict[str, Any], backend: str, groups: tuple[RunnerGroupConfig, ...]
    ) -> dict[str, dict[str, Any]]:
        """Settings for every backend the groups use, keyed by backend name."""
        per_backend = bool(settings) and all(
            key in BACKENDS and isinstance(item, dict | None) for key, item in settings.items()
        )
        by_name: dict[str, dict[str, Any]] = (
            {key: dict(item or {}) for key, item in settings.items()}
            if per_backend
            else {backend: settings}
        )
        used = dict.fromkeys(name for group in groups for name in group.backends)
        return {name: by_name.get(name, {}) for name in used}

    # -- redis ------------------------------------------------------------------------------------

    def _redis(self) -> tuple[str | None, RedisSource]:
        value = self.raw("redis-url")
        if not isinstance(value, str):
            self.error("redis-url", f"{_quote(value)} is not a URL")
            return None, "option"
        if value.strip():
            return self.check("redis-url", lambda v: _redis_url(v.strip())), "option"
        data = self.redis_relation
        if data is None:
            return None, "embedded"
        if data.get("url"):
            try:
                return _redis_url(data["url"]), "relation"
            except ValueError as exc:
                self.error("redis relation", f"url {exc}")
                return None, "relation"
        host, port = data.get("hostname") or data.get("host"), data.get("port")
        if not host or not port:
            return None, "relation"
        if not str(port).isdigit() or not 0 < int(port) < 65536:
            self.error("redis relation", f"port {_quote(port)} is not a TCP port")
            return None, "relation"
        host_part = f"[{host}]" if ":" in host else host
        return f"redis://{host_part}:{int(port)}/0", "relation"

    # -- runner groups ----------------------------------------------------------------------------

    def _single_group(
        self, backend: BackendName | None, github_group: str | None, image: str | None
    ) -> tuple[RunnerGroupConfig, ...] | None:
        count = self.check("virtual-machines", lambda v: _whole_number(v, 0))
        cpu = self.check("vm-cpu", lambda v: _whole_number(v, 1))
        memory = self.check("vm-memory", lambda v: _size(v, MIN_MEMORY, "512MiB"))
        disk = self.check("vm-disk", lambda v: _size(v, MIN_DISK, "1GiB"))
        labels = self.check(
            "labels", lambda v: _labels(_comma_list(v), ("self-hosted", "linux", self.arch))
        )
        if (
            None in (count, cpu, memory, disk, labels)
            or backend is None
            or github_group is None
            or image is None
        ):
            return None
        group = RunnerGroupConfig(
            name=DEFAULT_GROUP_NAME,
            labels=labels,
            backends=(backend,),
            image=image,
            cpu=cpu,
            memory=memory,
            disk=disk,
            min_idle=count,
            max_runners=count,
            runner_group=github_group,
        )
        return (group,)

    def _runner_groups(
        self, text: str, backend: BackendName | None, github_group: str | None, image: str | None
    ) -> tuple[RunnerGroupConfig, ...] | None:
        option = "runner-groups"
        try:
            loaded = _yaml(text, show_problem=True)
        except ValueError as exc:
            self.error(option, str(exc))
            return None
        if loaded is None:
            return self._single_group(backend, github_group, image)
        if not isinstance(loaded, list):
            self.error(option, "is not a YAML list of groups, like [{name: small, min-idle: 2}]")
            return None
        if not loaded:
            self.error(option, 'is an empty list; give at least one group or set it to ""')
            return None
        groups: list[RunnerGroupConfig] = []
        names: set[str] = set()
        failed = False
        for index, item in enumerate(loaded, start=1):
            name = item.get("name") if isinstance(item, dict) else None
            where = f"group {_quote(name)}" if isinstance(name, str) and name else f"item {index}"
            try:
                group = self._group(item, backend, github_group, image)
            except ValueError as exc:
                self.error(option, f"{where}: {exc}")
                failed = True
                continue
            if group.name in names:
                self.error(option, f"{where}: the name is used twice")
                failed = True
            names.add(group.name)
            groups.append(group)
        return None if failed else tuple(groups)

    def _group(
        self, item: Any, backend: BackendName | None, github_group: str | None, image: str | None
    ) -> RunnerGroupConfig:
        """One `runner-groups` item; raises ValueError naming the key at fault."""
        if not isinstance(item, dict):
            raise ValueError("is not a mapping like {name: small, min-idle: 2}")
        spec: dict[str, Any] = {}
        for key, value in item.items():
            name = str(key).replace("_", "-")
            if name not in _GROUP_KEYS:
                raise ValueError(f"unknown key {_quote(key)}; known keys: {', '.join(_GROUP_KEYS)}")
            spec[name] = value

        def field(key: str, parse: Callable[[Any], Any], default: Any) -> Any:
            if key not in spec or spec[key] is None:
                return default
            try:
                return parse(spec[key])
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None

        name = field("name", self._group_name, None)
        if name is None:
            raise ValueError('"name" is required')
        try:
            labels = self._group_labels(spec.get("labels"))
        except ValueError as exc:
            raise ValueError(f"labels: {exc}") from None
        min_idle = field("min-idle", lambda v: _whole_number(v, 0), 0)
        max_runners = field("max-runners", lambda v: _whole_number(v, 0), min_idle)
        if max_runners < min_idle:
            raise ValueError(f"max-runners ({max_runners}) < min-idle ({min_idle})")
        if "backend" in spec and "backends" in spec:
            raise ValueError('give "backend" or "backends", not both')
        backends = field("backend", lambda v: (_backend(v),), None)
        backends = field("backends", self._backend_list, backends)
        if backends is None:
            if backend is None:
                raise ValueError("no backend; fix the backend option or give one here")
            backends = (backend,)
        group = field("group", _github_group, github_group)
        group_image = field("image", self._image_name, image)
        if group is None or group_image is None:
            raise ValueError("depends on the options above; fix them first")
        return RunnerGroupConfig(
            name=name,
            labels=labels,
            backends=backends,
            image=group_image,
            cpu=field("cpu", lambda v: _whole_number(v, 1), 2),
            memory=field("memory", lambda v: _size(v, MIN_MEMORY, "512MiB"), parse_size("7GiB")),
            disk=field("disk", lambda v: _size(v, MIN_DISK, "1GiB"), parse_size("10GiB")),
            min_idle=min_idle,
            max_runners=max_runners,
            runner_group=group,
            max_lifetime=field("max-lifetime", self._lifetime, None),
        )

    @staticmethod
    def _group_name(value: Any) -> str:
        if not isinstance(value, str) or not _GROUP_NAME_RE.match(value):
            raise ValueError(
                f"{_quote(value)} is not a group name (up to 20 lower-case letters, digits and -)"
            )
        return value

    def _group_labels(self, value: Any) -> tuple[str, ...]:
        if value is None:
            value = []
        elif isinstance(value, str):
            value = _comma_list(value)
        if not isinstance(value, list) or not all(
            isinstance(label, str | int) and not isinstance(label, bool) for label in value
        ):
            raise ValueError("is not a list of labels like [large, gpu]")
        return _labels([str(label) for label in value], ("self-hosted", "linux", self.arch))

    @staticmethod
    def _backend_list(value: Any) -> tuple[BackendName, ...]:
        if not isinstance(value, list) or not value:
            raise ValueError("is not a non-empty list of backends like [lxd, openstack]")
        names = tuple(_backend(item) for item in value)
        if len(set(names)) != len(names):
            raise ValueError("names a backend twice")
        return names

    @staticmethod
    def _image_name(value: Any) -> str:
        if not isinstance(value, str) or not _IMAGE_RE.match(value):
            raise ValueError(f"{_quote(value)} is not an image name")
        return value

    @staticmethod
    def _lifetime(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ValueError(_units_message(exc, value)) from None
        except ArithmeticError:
            raise ValueError(f"{_quote(value)} is not a duration like 6h") from None
        if seconds == float("inf"):
            raise ValueError(f"{_quote(value)} is not a duration like 6h")
        if seconds < 60:
            raise ValueError(f"{_quote(value)} is too short; use at least 1m")
        return seconds
