"""The manager's configuration: a YAML file (or a mapping from the charm) → a typed :class:`ManagerConfig`.

Promises:

* every model forbids unknown keys, and every problem in a file is reported at once in one
  :class:`ConfigError` whose lines read ``key.path[index].field: what is wrong and what is accepted``;
* sizes accept human forms (``4GiB``, ``512MiB``; a plain number in a file is MiB, as
  :func:`github_runner_manager.units.parse_size` reads it) and durations accept ``60s``, ``6h`` or seconds;
* no secret (GitHub token, webhook secret, a password in the Redis URL, credentials in backend
  settings) ever appears in an error message or in :func:`dump_config`, whose output parses back to
  the same configuration (redacted secrets aside);
* secrets kept in files or the environment are read only when asked for
  (:meth:`GitHubConfig.resolve_token`, :meth:`WebhookConfig.resolve_secret`), so a config can be
  validated on a machine that does not hold them.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import os
import re
import socket
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from github_runner_manager.backends.registry import BACKENDS
from github_runner_manager.units import (
    GIB,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

__all__ = [
    "REDACTED",
    "ConfigError",
    "GitHubConfig",
    "GitHubPath",
    "ManagerConfig",
    "RedisConfig",
    "RunnerGroup",
    "SizingPolicy",
    "WebhookConfig",
    "dump_config",
    "dump_config_dict",
    "load_config",
    "parse_config",
    "redact_settings",
    "redact_url",
]

#: What a secret looks like in dumps and template contexts.
REDACTED = "**********"

#: Validation-context flag set by :func:`parse_config`: plain numbers for sizes are MiB (human input).
_HUMAN_SIZES = "human_sizes"

#: Keys whose values are never quoted in an error and are redacted in backend settings dumps.
_SECRET_KEY_RE = re.compile(
    r"(password|passwd|secret|token|credential|private_key|api_key|access_key)", re.IGNORECASE
)

_OWNER_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,99})$")
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_GROUP_NAME_RE = re.compile(r"^[a-z0-9-]{1,20}$")
_PREFIX_RE = re.compile(r"^[a-z0-9-]{1,12}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9._=:-]{1,100}$")
_KEY_PREFIX_RE = re.compile(r"^[A-Za-z0-9:_.-]{1,64}$")
_LISTEN_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):(?P<port>\d{1,5})$")
_REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "unix")


class ConfigError(Exception):
    """The configuration is invalid.

    ``str(err)`` lists every problem, ``; ``-separated, each as ``key.path: what is wrong and what is
    accepted`` — short enough for a Juju status line, precise enough to fix the file. The problems are
    also available one per item in :attr:`problems`. Never contains a secret.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


# --------------------------------------------------------------------------------------------
# Value types: sizes, durations, CIDRs
# --------------------------------------------------------------------------------------------


def _validate_size(value: Any, info: ValidationInfo) -> Any:
    """Bytes from ``4GiB``-style text; plain numbers are MiB in human input, bytes in Python."""
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size like 7GiB")
    if isinstance(value, int | float):
        if info.context and info.context.get(_HUMAN_SIZES):
            return parse_size(value)
        if value <= 0:
            raise ValueError(f'"{value}" is not a size like 7GiB (it must be positive)')
        return int(value)
    if value is None:
        return value
    raise ValueError(f"{_quote(value)} is not a size like 7GiB")


def _size_text(num_bytes: int) -> str:
    """The human form of a size that :func:`parse_size` reads back to exactly ``num_bytes``."""
    text = format_size(num_bytes)
    if not text.endswith("iB"):  # not KiB-aligned: "307B" would read back as MiB
        text = f"{num_bytes / 1024!r}KiB"
    return text


def _validate_duration(value: Any) -> Any:
    if value is None:
        return value
    return parse_duration(value)


def _duration_text(seconds: float) -> str | float:
    text = format_duration(seconds)
    return text if parse_duration(text) == seconds else seconds


def _validate_cidr(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{_quote(value)} is not a CIDR like 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f'"{value}" is not a CIDR like 10.0.0.0/8') from None
    raise ValueError(f'"{value}" has host bits set; did you mean {loose}?')


Size = Annotated[
    int,
    BeforeValidator(_validate_size),
    PlainSerializer(_size_text, return_type=str, when_used="json"),
]
"""Bytes; YAML accepts ``4GiB`` (plain numbers there are MiB); dumped as ``4GiB``."""

Duration = Annotated[
    float,
    BeforeValidator(_validate_duration),
    PlainSerializer(_duration_text, when_used="json"),
]
"""Seconds; YAML accepts ``60s``, ``10m``, ``6h`` or a number of seconds; dumped as ``6h``."""

Network = Annotated[
    Union[ipaddress.IPv4Network, ipaddress.IPv6Network],
    BeforeValidator(_validate_cidr),
]


def _check_listen(value: str | None, example: str) -> str | None:
    if value is None:
        return None
    match = _LISTEN_RE.match(value)
    if not match or int(match.group("port")) > 65535:
        raise ValueError(f'"{value}" is not an address like {example}')
    return value


def _quote(value: Any, limit: int = 60) -> str:
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f'"{text}"'


def _known_backend(name: str) -> str:
    if name in BACKENDS:
        return name
    near = difflib.get_close_matches(name, list(BACKENDS), n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    raise ValueError(
        f'"{name}" is not a known backend ({hint}known: {", ".join(sorted(BACKENDS))})'
    )


#: What backend settings may hold: what a YAML or JSON config expresses (and what the charm passes).
_PLAIN = (str, int, float, bool, type(None), Path, SecretStr, datetime.date)


def _unplain(value: Any, loc: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems for values in backend settings that are not plain data (e.g. YAML ``!!binary``)."""
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _unplain(v, (*loc, str(k)))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _unplain(v, (*loc, i))]
    if isinstance(value, _PLAIN):
        return []
    return [
        (
            loc,
            f"{type(value).__name__} data is not a setting value (text, number, list or mapping)",
        )
    ]


def _cross_error(problems: list[tuple[tuple[str | int, ...], str]]) -> PydanticCustomError:
    """One pydantic error carrying several problems, each at a path below the validator's own."""
    return PydanticCustomError(
        "config_cross",
        "{summary}",
        {"summary": "; ".join(msg for _, msg in problems), "problems": tuple(problems)},
    )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=False)


# --------------------------------------------------------------------------------------------
# GitHub targets
# --------------------------------------------------------------------------------------------


class GitHubPath(BaseModel):
    """Where runners register: an organisation, a repository or an enterprise.

    Written as ``acme``, ``acme/app`` or ``enterprise:big``; validated from that text wherever a
    config holds a path, and dumped back to it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["org", "repo", "enterprise"]
    owner: str
    repo: str | None = None

    @classmethod
    def parse(cls, text: str) -> GitHubPath:
        """Parse ``acme`` | ``acme/app`` | ``enterprise:big``.

        Raises:
            ValueError: the text is none of those forms; the message quotes it.
        """
        return cls.model_validate(text)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        text = data.strip()
        wrong = f'"{data}" is neither an org, owner/repo nor enterprise:NAME'
        if text.lower().startswith("enterprise:"):
            name = text.split(":", 1)[1]
            if not _OWNER_RE.match(name):
                raise ValueError(wrong)
            return {"kind": "enterprise", "owner": name, "repo": None}
        parts = text.split("/")
        if len(parts) == 1 and _OWNER_RE.match(parts[0]):
            return {"kind": "org", "owner": parts[0], "repo": None}
        if (
            len(parts) == 2
            and _OWNER_RE.match(parts[0])
            and _REPO_RE.match(parts[1])
            and parts[1] not in {".", ".."}
        ):
            return {"kind": "repo", "owner": parts[0], "repo": parts[1]}
        raise ValueError(wrong)

    @model_validator(mode="after")
    def _consistent(self) -> GitHubPath:
        if (self.kind == "repo") != (self.repo is not None):
            raise ValueError("repo is set exactly when kind is repo")
        return self

    @model_serializer(mode="plain")
    def _to_text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        if self.kind == "enterprise":
            return f"enterprise:{self.owner}"
        if self.kind == "repo":
            return f"{self.owner}/{self.repo}"
        return self.owner

    @property
    def api_prefix(self) -> str:
        """REST prefix of the target's runner endpoints: ``/orgs/acme``, ``/repos/acme/app``, ``/enterprises/big``."""
        if self.kind == "enterprise":
            return f"/enterprises/{self.owner}"
        if self.kind == "repo":
            return f"/repos/{self.owner}/{self.repo}"
        return f"/orgs/{self.owner}"


def _read_secret_file(path: Path, key: str) -> SecretStr:
    """Read a secret from a file; errors name the key and the path, never the content."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: {path} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"{key}: {path} is empty")
    return SecretStr(text)


def _blank_secret_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, SecretStr) and not value.get_secret_value().strip():
        return None
    return value


class GitHubConfig(_Model):
    """The GitHub API the manager talks to and where its runners register."""

    url: str = "https://api.github.com"
    token: SecretStr | None = None
    token_file: Path | None = None
    paths: list[GitHubPath] = Field(min_length=1)
    expand_org_repos: bool = False
    timeout: Duration = Field(default=10.0, gt=0)
    poll_interval: Duration = Field(default=30.0, gt=0)

    _blank_token = field_validator("token", mode="before")(_blank_secret_to_none)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"{_quote(value)} is not an http(s) URL like https://api.github.com")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use token or token_file")
        return value.rstrip("/")

    @field_validator("paths")
    @classmethod
    def _unique_paths(cls, value: list[GitHubPath]) -> list[GitHubPath]:
        seen: dict[GitHubPath, int] = {}
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for index, path in enumerate(value):
            if path in seen:
                problems.append(
                    ((index,), f'"{path}" is listed twice (also at paths[{seen[path]}])')
                )
            seen.setdefault(path, index)
        if problems:
            raise _cross_error(problems)
        return value

    def resolve_token(self) -> SecretStr:
        """The GitHub token: ``token``, else the content of ``token_file``, else ``$GITHUB_TOKEN``.

        Raises:
            ConfigError: naming ``github.token_file`` when that file is missing, unreadable or empty,
                or ``github.token`` when no source holds a token.
        """
        if self.token is not None:
            return SecretStr(self.token.get_secret_value().strip())
        if self.token_file is not None:
            return _read_secret_file(self.token_file, "github.token_file")
        env = os.environ.get("GITHUB_TOKEN", "").strip()
        if env:
            return SecretStr(env)
        raise ConfigError(
            "github.token: no GitHub token; set github.token, github.token_file "
            "or the GITHUB_TOKEN environment variable"
        )

    def html_url(self, path: GitHubPath) -> str:
        """The web URL of a target (``https://github.com/acme/app``), as the runner's config expects.

        ``api.github.com`` maps to ``github.com``; a GitHub Enterprise Server API (``…/api/v3``) to its
        host; any other URL (the emulator) is used as it is.
        """
        parts = urlsplit(self.url)
        netloc, base = parts.netloc, parts.path.rstrip("/")
        if netloc == "api.github.com":
            netloc, base = "github.com", ""
        elif base.endswith("/api/v3"):
            base = base[: -len("/api/v3")]
        suffix = f"enterprises/{path.owner}" if path.kind == "enterprise" else str(path)
        return urlunsplit((parts.scheme, netloc, f"{base}/{suffix}", "", ""))


class WebhookConfig(_Model):
    """The HTTP endpoint GitHub delivers ``workflow_job`` events to."""

    listen: str = "127.0.0.1:8080"
    path: str = "/webhook"
    secret: SecretStr | None = None
    secret_file: Path | None = None

    _blank_secret = field_validator("secret", mode="before")(_blank_secret_to_none)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        checked = _check_listen(value, "127.0.0.1:8080 or [::]:8080")
        assert checked is not None
        return checked

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(f"{_quote(value)} is not a URL path like /webhook")
        return value

    def resolve_secret(self) -> SecretStr:
        """The webhook secret: ``secret``, else the content of ``secret_file``, else ``$GITHUB_WEBHOOK_SECRET``.

        Raises:
            ConfigError: naming ``webhook.secret_file`` when that file is missing, unreadable or empty,
                or ``webhook.secret`` when no source holds a secret.
        """
        if self.secret is not None:
            return SecretStr(self.secret.get_secret_value().strip())
        if self.secret_file is not None:
            return _read_secret_file(self.secret_file, "webhook.secret_file")
        env = os.environ.get("GITHUB_WEBHOOK_SECRET", "").strip()
        if env:
            return SecretStr(env)
        raise ConfigError(
            "webhook.secret: no webhook secret; set webhook.secret, webhook.secret_file "
            "or the GITHUB_WEBHOOK_SECRET environment variable"
        )


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``**********`` (for errors, logs and dumps)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{hostinfo}"))


class RedisConfig(_Model):
    """Where the shared state lives.

    ``url`` takes ``redis://[:password@]host:port/db``, ``rediss://`` (TLS), ``unix:///path`` and
    ``redis+sentinel://host:port[,host:port]/master/db`` for a Sentinel-managed Redis.
    """

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "ghrm"

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        shown = _quote(redact_url(value))
        accepted = (
            "like redis://127.0.0.1:6379/0 (rediss://, redis+sentinel://host:port/master/db too)"
        )
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError(f"{shown} is not a Redis URL {accepted}") from None
        if parts.scheme not in _REDIS_SCHEMES:
            raise ValueError(f"{shown} is not a Redis URL {accepted}")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"{shown} names no socket path (unix:///run/redis.sock)")
            return value
        hosts = parts.netloc.rpartition("@")[2]
        for host in hosts.split(",") if parts.scheme == "redis+sentinel" else [hosts]:
            try:
                hostname = urlsplit(f"//{host}").hostname
                _ = urlsplit(f"//{host}").port  # raises on a bad port
            except ValueError:
                raise ValueError(f"{shown} has a port that is not a number; {accepted}") from None
            if not hostname:
                raise ValueError(f"{shown} names no host; {accepted}")
        segments = [s for s in parts.path.split("/") if s]
        if parts.scheme == "redis+sentinel":
            if not segments:
                raise ValueError(
                    f"{shown} names no Sentinel master; use redis+sentinel://host:port[,host:port]/master/db"
                )
            db_segments = segments[1:]
        else:
            db_segments = segments
        if len(db_segments) > 1 or (db_segments and not db_segments[0].isdigit()):
            raise ValueError(f"{shown} has a database that is not a number; {accepted}")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not _KEY_PREFIX_RE.match(value):
            raise ValueError(f"{_quote(value)} is not a key prefix of letters, digits and :_.-")
        return value

    @field_serializer("url", when_used="json")
    def _redacted_url(self, value: str) -> str:
        return redact_url(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """``repr()`` (and so any log line holding the model) shows the URL redacted."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" else value


class SizingPolicy(_Model):
    """Upper bounds for runs-on ``cpu=``/``mem=``/``disk=`` tokens; an unset bound is the group's own size."""

    max_cpu: int | None = Field(default=None, ge=1)
    max_memory: Size | None = None
    max_disk: Size | None = None


class RunnerGroup(_Model):
    """A flavor of runner: labels it serves, where and how big it is created, how many to keep."""

    name: str
    labels: list[str] = Field(default_factory=list)
    backend: str | None = None
    backends: list[str] | None = None
    image: str = Field(default="github-runner-debian-bookworm", min_length=1)
    cpu: int = Field(default=2, ge=1)
    memory: Size = 4 * GIB
    disk: Size = 20 * GIB
    min_idle: int = Field(default=0, ge=0)
    max_runners: int = Field(default=10, ge=0)
    max_lifetime: Duration | None = Field(default=None, gt=0)
    ephemeral: bool = True
    runner_group: str = Field(default="default", min_length=1)
    sizing: SizingPolicy | None = None
    paths: list[GitHubPath] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _GROUP_NAME_RE.match(value):
            raise ValueError(
                f"{_quote(value)} is not a group name of 1-20 lowercase letters, digits or -"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        problems: list[tuple[tuple[str | int, ...], str]] = [
            ((i,), f"{_quote(label)} is not a label of letters, digits and . _ - = :")
            for i, label in enumerate(value)
            if not _LABEL_RE.match(label)
        ]
        if problems:
            raise _cross_error(problems)
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        return None if value is None else _known_backend(value)

    @field_validator("backends")
    @classmethod
    def _backends(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one backend, like [lxd, openstack]")
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for index, name in enumerate(value):
            try:
                _known_backend(name)
            except ValueError as exc:
                problems.append(((index,), str(exc)))
            if name in value[:index]:
                problems.append(((index,), f'"{name}" is listed twice'))
        if problems:
            raise _cross_error(problems)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> RunnerGroup:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.backend is not None and self.backends is not None:
            problems.append(((), "set backend or backends, not both"))
        if self.max_runners < self.min_idle:
            problems.append(((), f"max_runners ({self.max_runners}) < min_idle ({self.min_idle})"))
        if self.sizing is not None:
            for bound, own, text in (
                ("max_cpu", self.cpu, str(self.cpu)),
                ("max_memory", self.memory, _size_text(self.memory)),
                ("max_disk", self.disk, _size_text(self.disk)),
            ):
                limit = getattr(self.sizing, bound)
                if limit is not None and limit < own:
                    shown = limit if bound == "max_cpu" else _size_text(limit)
                    field = bound.removeprefix("max_")
                    problems.append(
                        (("sizing", bound), f"{shown} is below the group's own {field} ({text})")
                    )
        if problems:
            raise _cross_error(problems)
        return self

    @property
    def backend_order(self) -> list[str]:
        """Backends to try, in order (the next one on a capacity error); ``["lxd"]`` by default."""
        if self.backends:
            return list(self.backends)
        return [self.backend or "lxd"]


def _default_unit() -> str:
    return socket.gethostname()


class ManagerConfig(_Model):
    """Everything one manager process (one charm unit) needs."""

    github: GitHubConfig
    webhook: WebhookConfig | None = None
    redis: RedisConfig = Field(default_factory=RedisConfig)
    reconcile_interval: Duration = Field(default=60.0, gt=0)
    max_total_runners: int = Field(default=0, ge=0)
    per_owner_max_runners: int = Field(default=0, ge=0)
    denylist: list[Network] = Field(default_factory=list)
    runner_groups: list[RunnerGroup] = Field(min_length=1)
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prefix: str = "ghr"
    unit: str = Field(default_factory=_default_unit, min_length=1)
    register_timeout: Duration = Field(default=300.0, gt=0)
    offline_timeout: Duration = Field(default=120.0, gt=0)
    #: after a failed create, a runner group (per GitHub target) waits this long before one probe
    #: create, doubling per failed round up to ``create_backoff_max`` (see backoff.py)
    create_backoff: Duration = Field(default=2.0, gt=0)
    create_backoff_max: Duration = Field(default=60.0, gt=0)
    concurrency: int = Field(default=32, ge=1)
    templates_dir: Path | None = None
    state_dir: Path = Path("/var/lib/github-runner-manager")
    metrics_listen: str | None = "127.0.0.1:9464"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX_RE.match(value):
            raise ValueError(
                f"{_quote(value)} is not a prefix of 1-12 lowercase letters, digits or -"
            )
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, value: str | None) -> str | None:
        return _check_listen(value, "127.0.0.1:9464")

    @field_validator("backends", mode="before")
    @classmethod
    def _backend_settings(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        problems: list[tuple[tuple[str | int, ...], str]] = []
        settings: dict[Any, Any] = {}
        for name, entry in value.items():
            try:
                _known_backend(str(name))
            except ValueError as exc:
                problems.append(((str(name),), str(exc)))
            problems += _unplain(entry, (str(name),))
            settings[name] = {} if entry is None else entry
        if problems:
            raise _cross_error(problems)
        return settings

    @field_serializer("backends", when_used="json")
    def _redacted_backends(self, value: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {name: redact_settings(entry) for name, entry in value.items()}

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """``repr()`` shows backend settings redacted (they may hold cloud credentials)."""
        for name, value in super().__repr_args__():
            yield name, redact_settings(value) if name == "backends" else value

    @model_validator(mode="after")
    def _coherent(self) -> ManagerConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        first: dict[str, int] = {}
        for index, group in enumerate(self.runner_groups):
            if group.name in first:
                problems.append(
                    (
                        ("runner_groups", index, "name"),
                        f'"{group.name}" is already used by runner_groups[{first[group.name]}]',
                    )
                )
            first.setdefault(group.name, index)
            allowed = ", ".join(str(p) for p in self.github.paths)
            for pindex, path in enumerate(group.paths or []):
                if path not in self.github.paths:
                    problems.append(
                        (
                            ("runner_groups", index, "paths", pindex),
                            f'"{path}" is not one of github.paths ({allowed})',
                        )
                    )
        if self.create_backoff_max < self.create_backoff:
            problems.append(
                (
                    ("create_backoff_max",),
                    f"{self.create_backoff_max:g}s is shorter than create_backoff "
                    f"({self.create_backoff:g}s): make it at least as long",
                )
            )
        if problems:
            raise _cross_error(problems)
        for group in self.runner_groups:
            if group.paths is None:
                group.paths = [self.github.paths[0]]
        return self

    def group(self, name: str) -> RunnerGroup:
        """The runner group called ``name``.

        Raises:
            KeyError: no such group.
        """
        for group in self.runner_groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def group_paths(self, group: RunnerGroup) -> list[GitHubPath]:
        """Where a group's runners register (its ``paths``, default ``github.paths[0]``)."""
        return list(group.paths) if group.paths else [self.github.paths[0]]

    def backend_settings(self, name: str) -> dict[str, Any]:
        """Settings for a backend; a backend used by a group needs no ``backends:`` entry (``{}``)."""
        return dict(self.backends.get(name) or {})


# --------------------------------------------------------------------------------------------
# Loading, errors, dumping
# --------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML would keep the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, typing.Hashable):
            continue  # construct_mapping refuses it ("found unhashable key"), a YAML error
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f'key "{key}" is given twice', key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_config(path: Path | str) -> ManagerConfig:
    """Load and validate a YAML config file.

    Raises:
        ConfigError: the file is missing or unreadable, is not YAML, or holds invalid settings; the
            message names each key path (and never quotes a secret or the offending YAML line).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: {_yaml_problem(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: the top level must be a mapping of keys, like github: ...")
    return parse_config(data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Position and problem of a YAML error, without the source snippet (it may hold a secret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "is not valid YAML"
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"not valid YAML: {problem}"


def parse_config(data: Mapping[str, Any]) -> ManagerConfig:
    """Validate a mapping (parsed YAML, or built by the charm) into a :class:`ManagerConfig`.

    Values are read as a human would write them: sizes as ``4GiB`` or plain MiB, durations as ``6h``
    or seconds.

    Raises:
        ConfigError: listing every problem found, each with its key path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("the configuration must be a mapping of keys, like github: ...")
    try:
        return ManagerConfig.model_validate(dict(data), context={_HUMAN_SIZES: True})
    except ValidationError as exc:
        problems: list[str] = []
        for error in exc.errors(include_url=False):
            for line in _describe(error):
                if line not in problems:
                    problems.append(line)
        for line in _raw_cross_problems(data):
            if line not in problems:
                problems.append(line)
        raise ConfigError(problems) from None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _raw_cross_problems(data: Mapping[str, Any]) -> list[str]:
    """Cross-field problems pydantic skips once a field of the same model failed.

    Run only when validation failed, so that one pass lists them too; on valid input the model
    validators report exactly the same lines.
    """
    groups = data.get("runner_groups")
    if not isinstance(groups, list):
        return []
    problems: list[str] = []
    first: dict[str, int] = {}
    for index, group in enumerate(groups):
        if not isinstance(group, Mapping):
            continue
        where = f"runner_groups[{index}]"
        name = group.get("name")
        if isinstance(name, str):
            if name in first:
                problems.append(
                    f'{where}.name: "{name}" is already used by runner_groups[{first[name]}]'
                )
            first.setdefault(name, index)
        if group.get("backend") is not None and group.get("backends") is not None:
            problems.append(f"{where}: set backend or backends, not both")
        min_idle = _as_int(group.get("min_idle", 0))
        max_runners = _as_int(group.get("max_runners", 10))
        if min_idle is not None and max_runners is not None and max_runners < min_idle:
            problems.append(f"{where}: max_runners ({max_runners}) < min_idle ({min_idle})")
    return problems


def _format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _is_secret_loc(loc: Sequence[str | int]) -> bool:
    """Whether a value at ``loc`` may be secret (never quoted in an error)."""
    if loc and loc[0] == "backends":
        return True
    return any(isinstance(p, str) and _SECRET_KEY_RE.search(p) for p in loc)


def _describe(error: Mapping[str, Any]) -> list[str]:
    """Turn one pydantic error into ``path: what is wrong and what is accepted`` lines."""
    loc: tuple[str | int, ...] = tuple(
        p for p in error["loc"] if isinstance(p, int) or not _is_union_tag(p)
    )
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "config_cross":
        return [f"{_format_loc(loc + tuple(sub))}: {message}" for sub, message in ctx["problems"]]
    path = _format_loc(loc)
    secret = _is_secret_loc(loc)
    value = REDACTED if secret else _quote(error.get("input"))
    if kind == "extra_forbidden":
        return [f"{path}: unknown key{_suggest(loc)}"]
    if kind == "missing":
        return [f"{path}: is required"]
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        if secret and not isinstance(error.get("input"), Mapping):
            message = "is not valid"
        return [f"{path}: {message}"]
    simple = {
        "int_type": "is not a whole number",
        "int_parsing": "is not a whole number",
        "int_from_float": "is not a whole number",
        "float_type": "is not a number",
        "float_parsing": "is not a number",
        "bool_type": "is not true or false",
        "bool_parsing": "is not true or false",
        "string_type": "is not text (quote it in YAML)",
        "list_type": "is not a list (write [a, b] or one '- item' per line)",
        "dict_type": "is not a mapping of keys",
        "model_type": "is not a mapping of keys",
        "model_attributes_type": "is not a mapping of keys",
        "path_type": "is not a file path",
        "literal_error": "is not one of {expected}",
    }
    bounds = {
        "greater_than": "must be greater than {gt}",
        "greater_than_equal": "must be at least {ge}",
        "less_than": "must be less than {lt}",
        "less_than_equal": "must be at most {le}",
        "too_short": "needs at least {min_length} entries",
        "too_long": "allows at most {max_length} entries",
        "string_too_short": "must not be empty",
        "string_too_long": "must be at most {max_length} characters",
    }
    if kind in simple:
        return [f"{path}: {value} {simple[kind].format(**ctx)}"]
    if kind in bounds:
        if kind in {"too_short", "string_too_short"}:
            return [f"{path}: {bounds[kind].format(**ctx)}"]
        return [f"{path}: {value} {bounds[kind].format(**ctx)}"]
    message = str(error.get("msg", "is not valid"))
    return [f"{path}: {message if not secret else 'is not valid'}"]


def _is_union_tag(part: str) -> bool:
    """pydantic inserts the branch name (``IPv4Network``, ``function-after[...]``) into union locs."""
    return "[" in part or part in {"IPv4Network", "IPv6Network", "str", "int", "float", "none"}


def _suggest(loc: Sequence[str | int]) -> str:
    """`` (did you mean listen?)`` for a mistyped key, else the list of accepted keys."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    fields = list(model.model_fields)
    near = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.6)
    if near:
        return f" (did you mean {near[0]}?)"
    return f" (accepted: {', '.join(fields)})"


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class validating the mapping at ``loc`` below :class:`ManagerConfig`."""
    annotation: Any = ManagerConfig
    for part in loc:
        annotation = _unwrap(annotation, part)
        if annotation is None:
            return None
    model = _unwrap(annotation, None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any, part: str | int | None) -> Any:
    """Step from an annotation into a field (str), a list item (int), or just strip wrappers (None)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            branches = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(branches) != 1:
                return None
            annotation = branches[0]
        else:
            break
    if part is None:
        return annotation
    if isinstance(part, int):
        if typing.get_origin(annotation) is list:
            return typing.get_args(annotation)[0]
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part)
        return None if field is None else field.annotation
    return None


def redact_settings(value: Any, key: str = "") -> Any:
    """Backend settings with values under secret-looking keys (password, token, ...) as ``**********``."""
    if key and _SECRET_KEY_RE.search(key) and value not in (None, "", {}, []):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact_settings(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_settings(v) for v in value]
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, Path):
        return str(value)
    return value


def dump_config_dict(cfg: ManagerConfig) -> dict[str, Any]:
    """The effective configuration (defaults filled in) as plain data with every secret redacted.

    Sizes and durations are in their human forms, so the result parses back with :func:`parse_config`.
    This is also the ``CONFIG`` variable templates see.
    """
    data: dict[str, Any] = cfg.model_dump(mode="json")
    return data


def dump_config(cfg: ManagerConfig) -> str:
    """The effective configuration as YAML, secrets shown as ``**********``; it loads back as-is."""
    return yaml.safe_dump(dump_config_dict(cfg), sort_keys=False, default_flow_style=False)
