"""Shared state of the fleet in Redis: runner records, caps, leases, locks, pickup latency, counters.

Several manager processes (Juju units, or standalone services) share one Redis, so every decision that
must hold across them is made *inside* Redis:

* :meth:`Store.reserve_runners` is one Lua script that counts the live records of the group, of the
  owner and of the whole fleet, and creates ``CREATING`` records only while every cap (0 = no cap)
  still has room. Two managers racing for the last slot of ``max_total_runners`` cannot both get it.
* :meth:`Store.transition` is a Lua compare-and-set on a record's ``state``: of two concurrent
  ``IDLE -> DELETING`` attempts exactly one wins, so a runner is never deleted twice or deleted
  while another process marks it busy.
* :meth:`Store.lease` is ``SET NX PX`` with a random token, released by a compare-and-delete script so
  a lease that expired and was taken by someone else is never released by its former holder.

Records are bookkeeping, never truth: everything here can be rebuilt from the backends and GitHub, and
nothing secret is stored (field names that look like secrets are refused). Every Redis failure is
raised as :class:`StoreUnavailable`, whose message names the Redis address without credentials.

Key layout (``p`` = ``key_prefix``): ``p:runner:{name}`` (hash), ``p:runners`` (all names),
``p:runners:group:{group}``, ``p:runners:owner:{owner}`` (index sets), ``p:lease:{key}``,
``p:lock:{name}``, ``p:pickup:{group}`` (list of the last 1000 latencies), ``p:counters`` (hash).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote

import redis
import redis.lock
from redis.sentinel import Sentinel

from github_runner_manager.planner import RunnerState

if TYPE_CHECKING:
    from github_runner_manager.config import RedisConfig

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Pickup latency samples kept per group.
PICKUP_SAMPLES = 1000
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "unix")
_CERT_REQS = {"none": "none", "cert_none": "none", "optional": "optional", "cert_optional": "optional",
              "required": "required", "cert_required": "required"}  # fmt: skip
_TLS_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")
_SECRET_QUERY = re.compile(r"((?:^|[?&])[^=&]*password=)[^&#]*", re.IGNORECASE)
#: Field names refused in runner records: Redis must never hold a secret.
_SECRET_WORDS = (
    "token",
    "secret",
    "password",
    "passwd",
    "jit",
    "credential",
    "private_key",
    "encoded",
)
#: Fields that identify a record and its index entries; only reserve/transition set them.
_IDENTITY_FIELDS = frozenset({"name", "group", "owner", "state"})
_RECORD_FIELDS = (
    "name", "group", "owner", "unit", "backend", "state", "created_at", "updated_at",
    "github_id", "job_id", "registered", "busy_since",
)  # fmt: skip


class StoreUnavailable(Exception):  # noqa: N818 - binding name from docs/architecture.md
    """Redis could not be reached or failed; the message names the address, never a password."""


# -- URL parsing ------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with the ``user:password@`` part and any ``*password=`` query value replaced by ``****``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_QUERY.sub(r"\1****", url)
    rest, qsep, query = rest.partition("?")
    if "@" in rest:
        rest = "****@" + rest.rpartition("@")[2]
    query = _SECRET_QUERY.sub(r"\1****", query)
    return f"{scheme}://{rest}{qsep}{query}"


def _parse_host(text: str, default_port: int, shown: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise ValueError(f"{shown}: bad host {text!r}")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{shown}: missing host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{shown}: bad port {port_text!r}")
    return host, int(port_text)


def _parse_db(text: str, shown: str) -> int:
    if text == "":
        return 0
    if not text.isdigit():
        raise ValueError(f"{shown}: database must be a number, got {text!r}")
    return int(text)


def _to_bool(value: str, key: str, shown: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{shown}: {key} must be true or false, got {value!r}")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis address (see :func:`parse_redis_url`). ``repr`` never shows a password."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master_name: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    path: str | None = None

    @property
    def tls(self) -> bool:
        """True for ``rediss://`` and ``rediss+sentinel://``."""
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        """True when the hosts are Sentinels and :attr:`master_name` names the monitored master."""
        return self.scheme.endswith("+sentinel")

    def describe(self) -> str:
        """Where this points, for messages: ``rediss://10.0.0.5:6380/0``; never credentials."""
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = f"{self.master_name}/{self.db}" if self.sentinel else str(self.db)
        return f"{self.scheme}://{hosts}/{path}"

    def ssl_kwargs(self) -> dict[str, Any]:
        """redis-py connection keyword arguments for TLS (empty without TLS)."""
        if not self.tls:
            return {}
        return {
            "ssl": True,
            "ssl_cert_reqs": self.ssl_cert_reqs,
            "ssl_ca_certs": self.ssl_ca_certs,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_check_hostname": self.ssl_check_hostname and self.ssl_cert_reqs == "required",
        }


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``redis://``, ``rediss://`` and ``redis+sentinel://`` addresses.

    Forms::

        redis://[[user]:password@]host[:port][/db]
        rediss://...same...[?ssl_cert_reqs=required|optional|none&ssl_ca_certs=PATH
                            &ssl_certfile=PATH&ssl_keyfile=PATH&ssl_check_hostname=true|false]
        redis+sentinel://[[user]:password@]h1[:p1],h2[:p2]/master_name[/db]
                            [?sentinel_username=U&sentinel_password=P]
        rediss+sentinel://...   (TLS to the sentinels and the master)
        unix://[[user]:password@]/path/to/redis.sock[?db=N]

    ``user:password`` authenticates to Redis (the master); Sentinels use ``sentinel_*`` when given.
    Percent-encode ``@ : / ? #`` inside passwords. TLS verifies the certificate and, when
    ``ssl_cert_reqs=required``, the host name (turn off with ``ssl_check_hostname=false``).

    Raises:
        ValueError: the address is malformed; the message shows it with credentials redacted.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("redis url: empty")
    shown = redact_url(url.strip())
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ValueError(
            f"{shown}: expected redis://, rediss://, redis+sentinel:// or rediss+sentinel://"
        )
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    username: str | None = None
    password: str | None = None
    if userinfo:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon else None
    if scheme == "unix":
        return _parse_unix(hostpart, query, username, password, shown)
    netloc, _, path = hostpart.partition("/")
    path = path.rstrip("/")
    sentinel = scheme.endswith("+sentinel")
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    if not netloc:
        raise ValueError(f"{shown}: missing host")
    hosts = tuple(
        _parse_host(part, default_port, shown) for part in netloc.split(",") if part.strip()
    )
    if not hosts:
        raise ValueError(f"{shown}: missing host")
    master_name: str | None = None
    if sentinel:
        master_name, _, db_text = path.partition("/")
        if not master_name:
            raise ValueError(f"{shown}: missing master name (redis+sentinel://host:port/MASTER/db)")
        db = _parse_db(db_text, shown)
    else:
        if len(hosts) > 1:
            raise ValueError(f"{shown}: several hosts need redis+sentinel://")
        db = _parse_db(path, shown)
    options: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"{shown}: malformed query string") from None
    for key, value in pairs:
        if key in _TLS_PARAMS:
            if not scheme.startswith("rediss"):
                raise ValueError(f"{shown}: {key} needs rediss:// (TLS)")
            if key == "ssl_cert_reqs":
                if value.lower() not in _CERT_REQS:
                    raise ValueError(f"{shown}: ssl_cert_reqs must be required, optional or none")
                options[key] = _CERT_REQS[value.lower()]
            elif key == "ssl_check_hostname":
                options[key] = _to_bool(value, key, shown)
            else:
                options[key] = value or None
        elif key in _SENTINEL_PARAMS:
            if not sentinel:
                raise ValueError(f"{shown}: {key} needs redis+sentinel://")
            options[key] = value or None
        else:
            raise ValueError(f"{shown}: unknown option {key!r}")
    return RedisTarget(
        scheme=scheme, hosts=hosts, db=db, username=username, password=password,
        master_name=master_name, **options,
    )  # fmt: skip


def _parse_unix(
    path: str, query: str, username: str | None, password: str | None, shown: str
) -> RedisTarget:
    if not path.startswith("/") or path == "/":
        raise ValueError(f"{shown}: names no socket path (unix:///run/redis.sock)")
    db = 0
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "db":
            raise ValueError(f"{shown}: unknown option {key!r}")
        db = _parse_db(value, shown)
    return RedisTarget(
        scheme="unix", hosts=(), db=db, username=username, password=password, path=path
    )


def describe_client(client: Any) -> str:
    """A credential-free description of where a redis-py client points (for error messages)."""
    described = getattr(client, "_ghrm_where", None)
    if isinstance(described, str):
        return described
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service:
        return f"sentinel service {service}"
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


# -- records ----------------------------------------------------------------------------------


def _encode(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, RunnerState):
        return str(value.value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _state(value: str | None, name: str) -> RunnerState:
    try:
        return RunnerState(value)
    except ValueError:
        logger.warning(
            "runner %s has unknown state %r in Redis; treating it as failed", name, value
        )
        return RunnerState.FAILED


@dataclass
class RunnerRecord:
    """A runner's bookkeeping record (``{prefix}:runner:{name}``). Times are epoch seconds."""

    name: str
    group: str
    owner: str
    unit: str
    backend: str
    state: RunnerState
    created_at: float
    updated_at: float
    github_id: int | None
    job_id: int | None
    registered: bool
    busy_since: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> RunnerRecord:
        """Build from the stored hash (strings); unknown fields land in :attr:`extra`."""
        name = data.get("name", "")
        return cls(
            name=name,
            group=data.get("group", ""),
            owner=data.get("owner", ""),
            unit=data.get("unit", ""),
            backend=data.get("backend", ""),
            state=_state(data.get("state"), name),
            created_at=_float(data.get("created_at")) or 0.0,
            updated_at=_float(data.get("updated_at")) or 0.0,
            github_id=_int(data.get("github_id")),
            job_id=_int(data.get("job_id")),
            registered=data.get("registered", "0") == "1",
            busy_since=_float(data.get("busy_since")),
            extra={k: v for k, v in data.items() if k not in _RECORD_FIELDS},
        )


def _check_fields(fields: Mapping[str, object], *, allow_identity: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in fields.items():
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS):
            raise ValueError(f"refusing to store field {key!r} in Redis: it looks like a secret")
        if not allow_identity and key in _IDENTITY_FIELDS:
            raise ValueError(f"field {key!r} cannot be changed here")
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", key):
            raise ValueError(f"bad record field name {key!r}")
        out[key] = _encode(value)
    return out


# -- Lua ----------------------------------------------------------------------------------------

# KEYS: 1 all-set, 2 group-set, 3 owner-set, 4.. runner hashes
# ARGV: 1 group_cap, 2 total_cap, 3 owner_cap, 4 now, 5 group, 6 owner, 7 unit, 8 backend, 9 state,
#       10 n extra field/value pairs, 11..10+2n those pairs, then the names (same order as KEYS[4..])
_RESERVE_LUA = """
local gcap, tcap, ocap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n_extra = tonumber(ARGV[10])
local total = redis.call('SCARD', KEYS[1])
local in_group = redis.call('SCARD', KEYS[2])
local in_owner = redis.call('SCARD', KEYS[3])
local reserved = {}
for i = 4, #KEYS do
  if (gcap > 0 and in_group >= gcap) or (tcap > 0 and total >= tcap) or (ocap > 0 and in_owner >= ocap) then
    break
  end
  local name = ARGV[i + 7 + 2 * n_extra]
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'name', name, 'group', ARGV[5], 'owner', ARGV[6], 'unit', ARGV[7],
               'backend', ARGV[8], 'state', ARGV[9], 'created_at', ARGV[4], 'updated_at', ARGV[4],
               'github_id', '', 'job_id', '', 'registered', '0', 'busy_since', '')
    for j = 11, 10 + 2 * n_extra, 2 do
      redis.call('HSET', KEYS[i], ARGV[j], ARGV[j + 1])
    end
    redis.call('SADD', KEYS[1], name)
    redis.call('SADD', KEYS[2], name)
    redis.call('SADD', KEYS[3], name)
    total = total + 1
    in_group = in_group + 1
    in_owner = in_owner + 1
    reserved[#reserved + 1] = name
  end
end
return reserved
"""

# KEYS: 1 runner hash. ARGV: 1 to_state, 2 now, 3 n_from, 4..3+n from states, then field/value pairs.
_TRANSITION_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
local n = tonumber(ARGV[3])
local allowed = false
for i = 4, 3 + n do
  if ARGV[i] == state then allowed = true break end
end
if not allowed then return 0 end
local args = {'state', ARGV[1], 'updated_at', ARGV[2]}
for i = 4 + n, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(args))
return 1
"""

# KEYS: 1 runner hash. ARGV: field/value pairs.
_UPDATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: 1 lease key. ARGV: 1 token.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _StoreLock(redis.lock.Lock):
    """A redis-py Lock whose connection failures surface as :class:`StoreUnavailable`."""

    _ghrm_where = "redis"

    def _wrap(self, func: Callable[[], _T]) -> _T:
        try:
            return func()
        except redis.exceptions.LockError:
            raise
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"Redis at {self._ghrm_where} unavailable during lock {self.name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def do_acquire(self, token: str | bytes) -> bool:  # type: ignore[override]
        return self._wrap(lambda: super(_StoreLock, self).do_acquire(token))

    def do_release(self, expected_token: str | bytes) -> None:  # type: ignore[override]
        self._wrap(lambda: super(_StoreLock, self).do_release(expected_token))

    def do_extend(self, additional_time: float, replace_ttl: bool) -> bool:  # type: ignore[override]
        return self._wrap(lambda: super(_StoreLock, self).do_extend(additional_time, replace_ttl))

    def do_reacquire(self) -> bool:
        return self._wrap(lambda: super(_StoreLock, self).do_reacquire())

    def locked(self) -> bool:
        return self._wrap(lambda: super(_StoreLock, self).locked())

    def owned(self) -> bool:
        return self._wrap(lambda: super(_StoreLock, self).owned())


class Store:
    """Runner records, caps, leases, locks, latency samples and counters in a shared Redis.

    Args:
        url: ``redis://``, ``rediss://`` or ``redis+sentinel://`` address (see :func:`parse_redis_url`).
        key_prefix: prefix of every key, so several fleets can share one Redis.
        socket_timeout: seconds for connecting and for each command (no call ever hangs).

    Raises:
        ValueError: the URL is malformed (credentials redacted in the message). No connection is made
            here; the first command connects.
    """

    def __init__(self, url: str, key_prefix: str = "ghrm", *, socket_timeout: float = 5.0) -> None:
        self.target = parse_redis_url(url)
        self.key_prefix = key_prefix
        self.where = self.target.describe()
        self.client: redis.Redis = self._connect(float(socket_timeout))
        self.client._ghrm_where = self.where  # type: ignore[attr-defined]
        self._reserve = self.client.register_script(_RESERVE_LUA)
        self._transition = self.client.register_script(_TRANSITION_LUA)
        self._update = self.client.register_script(_UPDATE_LUA)
        self._release = self.client.register_script(_RELEASE_LUA)

    @classmethod
    def from_config(cls, cfg: RedisConfig) -> Store:
        """Build from the config's ``redis`` section (``url``, ``key_prefix``)."""
        url: Any = cfg.url
        if hasattr(url, "get_secret_value"):  # tolerate a SecretStr url
            url = url.get_secret_value()
        return cls(str(url), cfg.key_prefix)

    def _connect(self, timeout: float) -> redis.Redis:
        target = self.target
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": 30,
            **target.ssl_kwargs(),
        }
        if target.path is not None:
            return redis.Redis(
                unix_socket_path=target.path, db=target.db, username=target.username,
                password=target.password, decode_responses=True, socket_timeout=timeout,
                socket_connect_timeout=timeout, health_check_interval=30,
            )  # fmt: skip
        if not target.sentinel:
            host, port = target.hosts[0]
            return redis.Redis(
                host=host, port=port, db=target.db, username=target.username,
                password=target.password, decode_responses=True, **common,
            )  # fmt: skip
        sentinel_kwargs = {k: v for k, v in common.items() if k != "health_check_interval"}
        if target.sentinel_password is not None:
            sentinel_kwargs["password"] = target.sentinel_password
        if target.sentinel_username is not None:
            sentinel_kwargs["username"] = target.sentinel_username
        manager = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs, **common)
        return manager.master_for(
            target.master_name or "", db=target.db, username=target.username,
            password=target.password, decode_responses=True,
        )  # fmt: skip

    def _call(self, what: str, func: Callable[[], _T]) -> _T:
        try:
            return func()
        except redis.RedisError as exc:
            message = f"{type(exc).__name__}: {exc}"
            for secret in (self.target.password, self.target.sentinel_password):
                if secret:
                    message = message.replace(secret, "****")
            raise StoreUnavailable(
                f"Redis at {self.where} unavailable during {what}: {message}"
            ) from exc

    def close(self) -> None:
        """Close the pooled connections."""
        with contextlib.suppress(redis.RedisError):
            self.client.close()

    def ping(self) -> bool:
        """True when Redis answers; False when it does not (the one call that does not raise)."""
        try:
            return bool(self.client.ping())
        except redis.RedisError as exc:
            logger.warning("Redis at %s does not answer: %s", self.where, type(exc).__name__)
            return False

    # -- keys ---------------------------------------------------------------------------------
    def _runner_key(self, name: str) -> str:
        return f"{self.key_prefix}:runner:{name}"

    @property
    def _all_key(self) -> str:
        return f"{self.key_prefix}:runners"

    def _group_key(self, group: str) -> str:
        return f"{self.key_prefix}:runners:group:{group}"

    def _owner_key(self, owner: str) -> str:
        return f"{self.key_prefix}:runners:owner:{owner}"

    # -- runner records -----------------------------------------------------------------------
    def reserve_runners(
        self,
        group: str,
        owner: str,
        names: list[str],
        unit: str,
        *,
        group_cap: int,
        total_cap: int,
        owner_cap: int,
        backend: str = "",
        fields: Mapping[str, object] | None = None,
    ) -> list[str]:
        """Atomically create ``CREATING`` records for as many of ``names`` as the caps allow.

        Counts are of every record in Redis (all units, all states): the group's against
        ``group_cap``, the owner's against ``owner_cap``, all records against ``total_cap``; 0 means
        no cap. Names that already have a record are skipped, never overwritten. ``fields`` (e.g. the
        creator's ``session``, a ``job_id``) are written into each new record in the same atomic
        step, so a crash right after the reservation never leaves a record without them.

        Returns:
            The names reserved, in the order given (a prefix of the new names).

        Raises:
            StoreUnavailable: Redis failed; nothing was reserved.
        """
        if not names:
            return []
        for cap_name, cap in (
            ("group_cap", group_cap),
            ("total_cap", total_cap),
            ("owner_cap", owner_cap),
        ):
            if cap < 0:
                raise ValueError(f"{cap_name} must be >= 0 (0 = no cap), got {cap}")
        extra = _check_fields(fields or {})
        keys = [self._all_key, self._group_key(group), self._owner_key(owner)]
        keys += [self._runner_key(name) for name in names]
        args: list[str | int] = [
            int(group_cap), int(total_cap), int(owner_cap), repr(time.time()),
            group, owner, unit, backend, RunnerState.CREATING.value, len(extra),
            *(item for pair in extra.items() for item in pair), *names,
        ]  # fmt: skip
        raw = self._call("reserve", lambda: self._reserve(keys=keys, args=args))
        reserved = [str(name) for name in raw or []]
        logger.info(
            "reserved %d/%d runner records group=%s owner=%s unit=%s names=%s",
            len(reserved), len(names), group, owner, unit, ",".join(reserved),
        )  # fmt: skip
        return reserved

    def transition(
        self,
        name: str,
        from_states: Collection[RunnerState],
        to_state: RunnerState,
        **fields: object,
    ) -> bool:
        """Compare-and-set the record's state: only when it is in ``from_states`` does it move.

        Also bumps ``updated_at`` and sets ``fields`` (e.g. ``github_id=12``, ``registered=True``)
        in the same atomic step; moving to ``BUSY`` sets ``busy_since`` unless given.

        Returns:
            True when this call made the change; False when the record is missing or in another state.

        Raises:
            ValueError: empty ``from_states`` or a field that must not be stored.
            StoreUnavailable: Redis failed.
        """
        if not from_states:
            raise ValueError("transition needs at least one from_state")
        encoded = _check_fields(fields)
        now = time.time()
        if to_state == RunnerState.BUSY and "busy_since" not in encoded:
            encoded["busy_since"] = repr(now)
        from_values = [RunnerState(s).value for s in from_states]
        args: list[str | int] = [
            RunnerState(to_state).value,
            repr(now),
            len(from_values),
            *from_values,
        ]
        for key, value in encoded.items():
            args += [key, value]
        changed = self._call(
            "transition", lambda: self._transition(keys=[self._runner_key(name)], args=args)
        )
        if changed:
            logger.info("runner %s -> %s", name, RunnerState(to_state).value)
        else:
            logger.debug("runner %s not moved to %s (state not in %s)", name, to_state, from_values)
        return bool(changed)

    def update(self, name: str, **fields: object) -> None:
        """Set fields of an existing record (never its name, group, owner or state; never creates one).

        Raises:
            ValueError: a field that must not be stored or changed here.
            StoreUnavailable: Redis failed.
        """
        encoded = _check_fields(fields)
        if not encoded:
            return
        encoded.setdefault("updated_at", repr(time.time()))
        args = [item for pair in encoded.items() for item in pair]
        done = self._call("update", lambda: self._update(keys=[self._runner_key(name)], args=args))
        if not done:
            logger.debug("runner %s has no record; update of %s skipped", name, sorted(encoded))

    def get_runner(self, name: str) -> RunnerRecord | None:
        """The record of ``name``, or ``None``."""
        data = self._call("get runner", lambda: self.client.hgetall(self._runner_key(name)))
        return RunnerRecord.from_hash(data) if data else None

    def list_runners(self, group: str | None = None) -> list[RunnerRecord]:
        """All records (of ``group`` when given), oldest first. Index entries without a record are pruned."""
        index = self._group_key(group) if group is not None else self._all_key

        def fetch() -> tuple[list[str], list[dict[str, str]]]:
            names = sorted(self.client.smembers(index))
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(self._runner_key(name))
            return names, pipe.execute() if names else []

        names, hashes = self._call("list runners", fetch)
        records: list[RunnerRecord] = []
        stale: list[str] = []
        for name, data in zip(names, hashes, strict=True):
            if data:
                records.append(RunnerRecord.from_hash(data))
            else:
                stale.append(name)
        if stale:
            self._call("prune index", lambda: self.client.srem(index, *stale))
        records.sort(key=lambda r: (r.created_at, r.name))
        return records

    def delete_runner(self, name: str) -> None:
        """Remove the record and its index entries (idempotent)."""
        key = self._runner_key(name)

        def delete() -> None:
            group, owner = self.client.hmget(key, ["group", "owner"])
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.srem(self._all_key, name)
            if group is not None:
                pipe.srem(self._group_key(group), name)
            if owner is not None:
                pipe.srem(self._owner_key(owner), name)
            pipe.execute()

        self._call("delete runner", delete)
        logger.info("runner record %s deleted", name)

    def counts(self) -> dict[str, dict[str, int]]:
        """``group -> state value -> number of records`` over all units."""
        result: dict[str, dict[str, int]] = {}
        for record in self.list_runners():
            by_state = result.setdefault(record.group, {})
            by_state[record.state.value] = by_state.get(record.state.value, 0) + 1
        return result

    def owner_count(self, owner: str) -> int:
        """Records of ``owner`` (GitHubPath text) over all units."""
        return int(self._call("owner count", lambda: self.client.scard(self._owner_key(owner))))

    def group_count(self, group: str) -> int:
        """Records of ``group`` over all units."""
        return int(self._call("group count", lambda: self.client.scard(self._group_key(group))))

    def total_count(self) -> int:
        """All records over all units."""
        return int(self._call("total count", lambda: self.client.scard(self._all_key)))

    # -- leases and locks -----------------------------------------------------------------------
    @contextmanager
    def lease(
        self,
        key: str,
        ttl: float,
        *,
        holder: str = "",
        holder_dead: Callable[[str], bool] | None = None,
    ) -> Iterator[bool]:
        """Try to take the lease ``key`` for ``ttl`` seconds; yields whether this call holds it.

        Never blocks. On exit the lease is released only if it is still ours (compare-and-delete),
        so a holder that outlived its ttl cannot release someone else's lease.

        ``holder`` (who takes the lease, e.g. a process session) is stored with the lease. When the
        lease is taken and ``holder_dead`` says its holder is dead, the lease is broken at once
        (compare-and-delete of exactly that value) and taken: work a SIGKILLed process left half
        done is resumed by the next caller instead of waiting out the ttl. ``holder_dead`` must only
        answer True when it is sure (a process of this host that no longer runs).

        Raises:
            StoreUnavailable: Redis failed while taking the lease.
        """
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        lease_key = f"{self.key_prefix}:lease:{key}"
        token = f"{uuid.uuid4().hex}|{holder}" if holder else uuid.uuid4().hex
        millis = max(1, int(ttl * 1000))

        def take() -> bool:
            return bool(
                self._call("lease", lambda: self.client.set(lease_key, token, nx=True, px=millis))
            )

        acquired = take()
        if not acquired and holder_dead is not None:
            current = self._call("lease", lambda: self.client.get(lease_key))
            other = str(current).partition("|")[2] if current else ""
            if other and holder_dead(other):
                broken = self._call(
                    "lease", lambda: self._release(keys=[lease_key], args=[current])
                )
                if broken:
                    logger.warning("lease %s of dead process %s broken", key, other)
                acquired = take()
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    self._release(keys=[lease_key], args=[token])
                except redis.RedisError as exc:
                    logger.warning(
                        "lease %s not released (%s); it expires in at most %.1fs",
                        key, type(exc).__name__, ttl,
                    )  # fmt: skip

    def lock(
        self, name: str, timeout: float, *, blocking_timeout: float | None = None
    ) -> redis.lock.Lock:
        """A redis-py Lock ``{prefix}:lock:{name}`` that expires after ``timeout`` seconds.

        Connection failures in its methods raise :class:`StoreUnavailable`; ``LockError`` (e.g.
        releasing a lock no longer owned) is raised unchanged.
        """
        lock = self.client.lock(
            f"{self.key_prefix}:lock:{name}", timeout=timeout,
            blocking_timeout=blocking_timeout, lock_class=_StoreLock,
        )  # fmt: skip
        lock._ghrm_where = self.where  # type: ignore[attr-defined]
        return lock

    # -- pickup latency and counters ------------------------------------------------------------
    def record_pickup(self, group: str, seconds: float) -> None:
        """Keep one pickup latency sample for ``group`` (the last 1000 are kept)."""
        key = f"{self.key_prefix}:pickup:{group}"

        def push() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(key, repr(max(0.0, float(seconds))))
            pipe.ltrim(key, 0, PICKUP_SAMPLES - 1)
            pipe.execute()

        self._call("record pickup", push)

    def pickup_percentiles(self, group: str) -> dict[str, float | int | None]:
        """``{"count", "p50", "p95", "max"}`` over the kept samples (nearest rank); None without samples."""
        raw = self._call(
            "pickup percentiles",
            lambda: self.client.lrange(f"{self.key_prefix}:pickup:{group}", 0, -1),
        )
        samples = sorted(v for v in (_float(x) for x in raw) if v is not None)
        if not samples:
            return {"count": 0, "p50": None, "p95": None, "max": None}

        def rank(p: float) -> float:
            return samples[max(0, math.ceil(p / 100 * len(samples)) - 1)]

        return {"count": len(samples), "p50": rank(50), "p95": rank(95), "max": samples[-1]}

    def incr(self, counter: str, by: int = 1) -> None:
        """Add ``by`` to a fleet-wide counter."""
        self._call("incr", lambda: self.client.hincrby(f"{self.key_prefix}:counters", counter, by))

    def counters(self) -> dict[str, int]:
        """All fleet-wide counters (also those the job queue keeps, e.g. ``jobqueue_malformed``)."""
        raw = self._call("counters", lambda: self.client.hgetall(f"{self.key_prefix}:counters"))
        return {str(k): int(v) for k, v in raw.items()}
