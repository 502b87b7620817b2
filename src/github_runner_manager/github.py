"""GitHub REST client for the runner manager: cheap, polite and never hanging.

What this module promises its callers (``manager.py``, ``runner_binary.py``, the CLI):

* **Every call has a timeout** (``timeout`` seconds for connect and for each read).
* **Pagination** follows the ``Link`` header's ``rel="next"`` URL with ``per_page=100``; the next URL is
  only followed when it points at the same origin as the API (the token never leaves for another host).
* **Conditional GETs**: every GET remembers ``(ETag, parsed body, next link)`` per URL and sends
  ``If-None-Match``; a ``304`` returns the cached result, is counted as ``not_modified`` and costs no
  rate-limit unit (GitHub: "does not count against your primary rate limit").
* **Rate limits**: ``x-ratelimit-*`` headers are read on every response. Under a reserve (5 % of the limit by
  default) requests are spread out instead of bursting; with the budget spent the client waits for the reset.
  A ``403``/``429`` with ``retry-after`` waits that long, one with ``x-ratelimit-remaining: 0`` waits until
  ``x-ratelimit-reset``, a secondary limit without either waits a minute (doubling on repeats). No request is
  sent meanwhile by any thread of this client. A wait longer than ``max_wait`` raises :class:`RateLimited`
  at once (and later calls fail fast until ``retry_at``) -- never a storm of requests.
* **Transient failures** (5xx, connection errors, timeouts) are retried with exponential backoff and jitter
  (tenacity), at most ``max_attempts`` attempts. Only operations that are safe to repeat are retried:
  GETs, DELETE (idempotent; a repeat answering 404 reads as "already gone"), registration/remove tokens
  (each call just mints a token) and ``generate-jitconfig`` (a repeat whose first attempt did create the
  runner answers 409; :meth:`GitHubClient.generate_jit_config` resolves that by looking the runner up and,
  when it never connected, deleting it and asking once more -- an encoded JIT config cannot be fetched again,
  so the runner cannot be reused).
* **Errors** are :class:`GitHubError` subclasses with a one-line message naming the method and URL path:
  ``401`` → :class:`GitHubAuthError` ("check the token's scopes"), ``403`` that is not a rate limit →
  :class:`GitHubAuthError`, malformed JSON → :class:`GitHubError`. Never a traceback for the operator,
  never the token, a registration token or a JIT config in a message or a log line.
* :meth:`GitHubClient.stats` counts requests, rate-limit units, 304s per operation, and the last budget seen.

The client is thread-safe: the manager creates and deletes runners with bounded concurrency.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import tenacity

from github_runner_manager import __version__

if TYPE_CHECKING:
    from github_runner_manager.config import GitHubPath

logger = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
PER_PAGE = 100
#: Wait after a secondary rate limit that names no time ("wait at least one minute", GitHub docs).
SECONDARY_LIMIT_WAIT = 60.0
#: Margin added to ``x-ratelimit-reset`` (whole epoch seconds) so that we never retry a moment too early.
RESET_MARGIN = 0.5
#: How many pages a listing may have before the client refuses (a loop guard, 100,000 items).
MAX_PAGES = 1000
#: Rate-limit waits inside one call before giving up (each wait is also bounded by ``max_wait``).
MAX_RATE_LIMIT_WAITS = 8

_VERSION_RE = re.compile(r"(\d+\.\d+\.\d+(?:[.-][0-9A-Za-z.]+)?)\.(?:tar\.gz|tgz|zip)$")
_URL_VERSION_RE = re.compile(r"/v(\d+\.\d+\.\d+)/")
_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;\s*[^,;]+)*)")


# --------------------------------------------------------------------------------------------- errors
class GitHubError(Exception):
    """A GitHub call failed; the message names the operation and the URL path, never a secret.

    Attributes:
        status: the HTTP status GitHub answered, or ``None`` when no answer came (timeout, connection).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GitHubAuthError(GitHubError):
    """GitHub rejected the token (401) or refused the operation (403 that is not a rate limit)."""


class RateLimited(GitHubError):  # noqa: N818 - name fixed by docs/architecture.md
    """A rate limit asks for a wait longer than ``max_wait``; nothing may be sent before ``retry_at``."""

    def __init__(self, message: str, *, retry_at: float, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_at = retry_at


class _TransientError(GitHubError):
    """A 5xx, a timeout or a connection error: worth another attempt."""


# ------------------------------------------------------------------------------------- value objects
@dataclass(frozen=True)
class GitHubRunner:
    """A self-hosted runner as GitHub reports it; ``owner`` is the :class:`GitHubPath` text it was listed under."""

    id: int
    name: str
    os: str
    status: str
    busy: bool
    labels: tuple[str, ...]
    owner: str


@dataclass(frozen=True)
class JitConfig:
    """A just-in-time runner configuration. ``encoded`` is a secret: never logged, never stored."""

    runner_id: int
    runner_name: str
    encoded: str

    def __repr__(self) -> str:
        return f"JitConfig(runner_id={self.runner_id}, runner_name={self.runner_name!r}, encoded='**********')"


@dataclass(frozen=True)
class RunnerApplication:
    """One downloadable runner application (``GET …/actions/runners/downloads``).

    ``version`` is read from the file name (``actions-runner-linux-x64-2.164.0.tar.gz``) or the download URL
    (``…/download/v2.164.0/…``); ``sha256_checksum`` is ``None`` when GitHub gives none.
    """

    os: str
    architecture: str
    download_url: str
    filename: str
    sha256_checksum: str | None
    version: str


@dataclass(frozen=True)
class QueuedJob:
    """A workflow job waiting for a runner, found by polling (the safety net for lost webhooks)."""

    id: int
    run_id: int
    repo: str
    labels: tuple[str, ...]
    status: str
    runner_name: str | None
    created_at: float


@dataclass(frozen=True)
class WebHook:
    """A webhook of an organisation or repository (no secret: GitHub never returns it)."""

    id: int
    url: str
    events: tuple[str, ...]
    active: bool


@dataclass(frozen=True)
class HookDelivery:
    """One delivery attempt of a webhook; ``ok`` when the receiver answered 2xx."""

    id: int
    guid: str
    delivered_at: float
    status_code: int
    event: str
    action: str | None
    redelivery: bool

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


@dataclass(frozen=True)
class RateLimitInfo:
    """The ``x-ratelimit-*`` headers of one response (``None`` where absent or unreadable)."""

    limit: int | None = None
    remaining: int | None = None
    used: int | None = None
    reset: float | None = None
    resource: str | None = None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: Any
    next_url: str | None
    not_modified: bool = False


@dataclass
class _OpStats:
    requests: int = 0
    rate_limit_units: int = 0
    not_modified: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------------- pure helpers
def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(float(text.strip()))
    except (ValueError, OverflowError):  # OverflowError: "inf"
        return None


def parse_link_next(header: str | None) -> str | None:
    """Return the URL of the ``rel="next"`` entry of a ``Link`` header, or ``None``.

    Handles several rels per entry (``rel="next last"``), unquoted rels and any order of entries.
    """
    if not header:
        return None
    for match in _LINK_RE.finditer(header):
        url, params = match.group(1).strip(), match.group(2)
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "rel" and "next" in value.strip().strip('"').lower().split():
                return url or None
    return None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo:
    """Read the ``x-ratelimit-*`` headers (case-insensitive); unreadable values become ``None``."""
    low = _lower(headers)
    reset = _int_or_none(low.get("x-ratelimit-reset"))
    return RateLimitInfo(
        limit=_int_or_none(low.get("x-ratelimit-limit")),
        remaining=_int_or_none(low.get("x-ratelimit-remaining")),
        used=_int_or_none(low.get("x-ratelimit-used")),
        reset=float(reset) if reset is not None else None,
        resource=low.get("x-ratelimit-resource"),
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``retry-after`` header: delta-seconds or an HTTP date; ``None`` if unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:  # "inf" or "nan" is no time to wait for: unreadable
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None instead of raising
        return None
    return max(0.0, when.timestamp() - now)


def rate_limit_wait(
    status: int, headers: Mapping[str, str], now: float, *, message: str = "", repeat: int = 0
) -> float | None:
    """How long to wait before retrying a response, or ``None`` when it is not a rate limit.

    GitHub's rules, in order: a ``retry-after`` header gives the wait; else ``x-ratelimit-remaining: 0``
    means waiting until ``x-ratelimit-reset``; else a 429, or a 403 whose message speaks of a rate limit,
    is a secondary limit: wait a minute, doubling for each ``repeat``. Any other 403 is a permission error.
    """
    if status not in (403, 429):
        return None
    low = _lower(headers)
    retry_after = parse_retry_after(low.get("retry-after"), now)
    if retry_after is not None:
        return retry_after
    info = parse_rate_limit(low)
    if info.remaining == 0 and info.reset is not None:
        return max(0.0, info.reset - now) + RESET_MARGIN
    if status == 429 or "rate limit" in message.lower():
        return SECONDARY_LIMIT_WAIT * (2 ** max(0, repeat))
    return None


def pace_delay(
    info: RateLimitInfo, now: float, *, reserve_fraction: float = 0.05, max_delay: float = 2.0
) -> float:
    """Delay before the next request so the remaining budget lasts until the reset.

    Zero while ``remaining`` is above the reserve (``reserve_fraction`` of the limit); under it, the time left
    until the reset divided by the requests left, capped at ``max_delay`` (calls are spread, not stopped).
    A spent budget (``remaining == 0``) is not paced here: the caller waits for the reset.
    """
    if info.remaining is None or info.limit is None or info.reset is None or info.remaining <= 0:
        return 0.0
    reserve = max(1.0, info.limit * reserve_fraction)
    if info.remaining >= reserve:
        return 0.0
    window = max(0.0, info.reset - now)
    return min(max_delay, window / info.remaining)


def backoff_delay(
    attempt: int,
    *,
    initial: float = 0.5,
    maximum: float = 30.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with "equal jitter" after failed attempt number ``attempt`` (1-based).

    The ceiling doubles per attempt (``initial``, ``2·initial``, …, at most ``maximum``); the delay is drawn
    from ``[ceiling/2, ceiling]`` so that many clients do not retry in step yet each waits a real minimum.
    """
    ceiling = min(maximum, initial * (2 ** max(0, attempt - 1)))
    return ceiling / 2 + rand() * ceiling / 2


def parse_version(app: Mapping[str, Any]) -> str:
    """The runner version from a ``downloads`` entry's file name or URL; ``"unknown"`` when neither has one."""
    match = _VERSION_RE.search(str(app.get("filename") or ""))
    if match:
        return match.group(1)
    match = _URL_VERSION_RE.search(str(app.get("download_url") or ""))
    return match.group(1) if match else "unknown"


def parse_timestamp(value: object) -> float | None:
    """ISO 8601 (``2024-01-01T00:00:00Z``) → epoch seconds; ``None`` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------- client
class GitHubClient:
    """REST client for the self-hosted-runner endpoints of one GitHub (or GHES) API with one token.

    Args:
        url: API root, e.g. ``https://api.github.com`` or ``https://ghe.example.com/api/v3``.
        token: token sent as ``Authorization: Bearer``; never logged, never in an error message.
        timeout: seconds for the connection and for each read of every request.
        max_wait: the longest rate-limit wait the client sits through; a longer one raises :class:`RateLimited`.
        session: a ``requests.Session`` to use (one is created otherwise).
        sleep: how to wait (injectable so tests of the waiting logic need no real time).
        clock: epoch clock used with ``x-ratelimit-reset`` and ``retry-after``.
        max_attempts: attempts per call on 5xx / connection errors / timeouts.
        backoff_initial: first backoff ceiling in seconds (doubles per attempt, see :func:`backoff_delay`).
        backoff_max: largest backoff ceiling.
        reserve_fraction: share of the limit under which requests are spread out.
        pace_max: the longest spreading delay between two requests.
        cache_size: URLs kept in the ETag cache (least recently used dropped first).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10,
        max_wait: float = 900,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        reserve_fraction: float = 0.05,
        pace_max: float = 2.0,
        cache_size: int = 4096,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.max_wait = float(max_wait)
        self._origin = _origin(self.url)
        self._session = session or requests.Session()
        self._headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": f"github-runner-manager/{__version__}",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._sleep = sleep
        self._clock = clock
        self._max_attempts = max(1, int(max_attempts))
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._reserve_fraction = reserve_fraction
        self._pace_max = pace_max
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[str, tuple[str, Any, str | None]] = (
            collections.OrderedDict()
        )
        self._ops: dict[str, _OpStats] = collections.defaultdict(_OpStats)
        self._budgets: dict[str, RateLimitInfo] = {}
        self._op_resource: dict[str, str] = {}
        self._last = RateLimitInfo()
        self._blocked_until = 0.0  # set by retry-after / secondary limits: no request before it
        self._next_slot = 0.0  # pacing under the reserve: earliest time for the next request
        self._waited = 0.0
        self._group_ids: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------------------ public API
    def list_runners(self, path: GitHubPath) -> list[GitHubRunner]:
        """All runners registered at ``path`` (every page; unchanged pages come from the ETag cache)."""
        items = self._paginate(
            f"{path.api_prefix}/actions/runners", "runners", operation="list_runners"
        )
        return [self._runner(item, path, f"{path.api_prefix}/actions/runners") for item in items]

    def _runner_named(self, path: GitHubPath, name: str) -> GitHubRunner | None:
        """The runner called ``name`` at ``path`` (GitHub's ``name`` filter of the runner listing)."""
        url = f"{path.api_prefix}/actions/runners"
        items = self._paginate(
            url, "runners", operation="generate_jit_config", params={"name": name}
        )
        runners = [self._runner(item, path, url) for item in items]
        return next((r for r in runners if r.name == name), None)

    def get_runner(self, path: GitHubPath, runner_id: int) -> GitHubRunner | None:
        """One runner by id, or ``None`` when GitHub no longer knows it (404)."""
        url = f"{path.api_prefix}/actions/runners/{int(runner_id)}"
        reply = self._request("GET", url, operation="get_runner", missing_ok=True)
        if reply.status == 404:
            return None
        return self._runner(reply.body, path, url)

    def delete_runner(self, path: GitHubPath, runner_id: int) -> bool:
        """Remove a runner; ``False`` when it was already gone (404). Retried on 5xx (idempotent)."""
        url = f"{path.api_prefix}/actions/runners/{int(runner_id)}"
        reply = self._request(
            "DELETE", url, operation="delete_runner", expected=(204, 200), missing_ok=True
        )
        gone = reply.status != 404
        logger.info(
            "github runner %s %s at %s", runner_id, "deleted" if gone else "already gone", path
        )
        return gone

    def generate_jit_config(
        self,
        path: GitHubPath,
        name: str,
        labels: Sequence[str],
        runner_group_id: int = 1,
        work_folder: str = "_work",
    ) -> JitConfig:
        """Register a just-in-time runner and return its config (the only secret an instance receives).

        A 409 means the name is taken -- usually by our own earlier attempt whose answer was lost (a 5xx or a
        timeout after GitHub had created it). Such a runner never connected: it is deleted and the config is
        asked for once more. A runner of that name that is online or busy is someone else's and is left alone
        (:class:`GitHubError` with status 409).
        """
        url = f"{path.api_prefix}/actions/runners/generate-jitconfig"
        payload = {
            "name": name,
            "runner_group_id": int(runner_group_id),
            "labels": list(labels),
            "work_folder": work_folder,
        }
        try:
            reply = self._request(
                "POST", url, operation="generate_jit_config", json_body=payload, expected=(201, 200)
            )
        except GitHubError as exc:
            if exc.status != 409:
                raise
            existing = self._runner_named(path, name)
            if existing is None or existing.busy or existing.status == "online":
                raise GitHubError(
                    f"POST {url}: a runner named {name!r} already exists at {path}"
                    + (" and is in use" if existing else ""),
                    status=409,
                ) from None
            logger.warning(
                "runner name %s taken at %s by runner %s that never connected; deleting it and retrying",
                name,
                path,
                existing.id,
            )
            self.delete_runner(path, existing.id)
            reply = self._request(
                "POST", url, operation="generate_jit_config", json_body=payload, expected=(201, 200)
            )
        body = reply.body
        try:
            runner = body["runner"]
            config = JitConfig(
                runner_id=int(runner["id"]),
                runner_name=str(runner["name"]),
                encoded=str(body["encoded_jit_config"]),
            )
        except (TypeError, KeyError, ValueError):
            raise GitHubError(
                f"POST {url}: unexpected response shape (need runner.id, runner.name, encoded_jit_config)"
            ) from None
        logger.info(
            "jit config generated for runner %s (id %s) at %s",
            config.runner_name,
            config.runner_id,
            path,
        )
        return config

    def registration_token(self, path: GitHubPath) -> str:
        """A registration token for ``config.sh`` (expires after an hour; never logged)."""
        return self._token(path, "registration-token", "registration_token")

    def remove_token(self, path: GitHubPath) -> str:
        """A remove token for ``config.sh remove`` (never logged)."""
        return self._token(path, "remove-token", "remove_token")

    def runner_group_id(self, org: str, name: str) -> int:
        """The id of an organisation's runner group by name (cached; ``"default"`` is 1 without a request)."""
        if name == "default":
            return 1
        key = (org, name)
        with self._lock:
            cached = self._group_ids.get(key)
        if cached is not None:
            return cached
        url = f"/orgs/{org}/actions/runner-groups"
        for group in self._paginate(url, "runner_groups", operation="runner_group_id"):
            if isinstance(group, Mapping) and group.get("name") == name:
                try:
                    group_id = int(group["id"])
                except (KeyError, TypeError, ValueError):
                    raise GitHubError(
                        f"GET {url}: runner group {name!r} has no usable id"
                    ) from None
                with self._lock:
                    self._group_ids[key] = group_id
                return group_id
        raise GitHubError(f"GET {url}: no runner group named {name!r} in {org}", status=404)

    def runner_applications(self, path: GitHubPath) -> list[RunnerApplication]:
        """The runner applications GitHub offers for download at ``path``."""
        url = f"{path.api_prefix}/actions/runners/downloads"
        reply = self._request("GET", url, operation="runner_applications")
        if not isinstance(reply.body, list):
            raise GitHubError(f"GET {url}: unexpected response shape (expected a list)")
        apps = []
        for item in reply.body:
            try:
                checksum = item.get("sha256_checksum")
                apps.append(
                    RunnerApplication(
                        os=str(item["os"]),
                        architecture=str(item["architecture"]),
                        download_url=str(item["download_url"]),
                        filename=str(item["filename"]),
                        sha256_checksum=str(checksum).lower() if checksum else None,
                        version=parse_version(item),
                    )
                )
            except (AttributeError, KeyError, TypeError):
                raise GitHubError(
                    f"GET {url}: unexpected response shape (need os, architecture, download_url, filename)"
                ) from None
        return apps

    def list_org_repos(self, org: str) -> list[str]:
        """``owner/name`` of every repository of an organisation."""
        url = f"/orgs/{org}/repos"
        repos = []
        for item in self._paginate(url, None, operation="list_org_repos"):
            full_name = item.get("full_name") if isinstance(item, Mapping) else None
            if not full_name:
                raise GitHubError(
                    f"GET {url}: unexpected response shape (repository without full_name)"
                )
            repos.append(str(full_name))
        return repos

    def queued_jobs(self, repos: Iterable[str]) -> list[QueuedJob]:
        """Jobs waiting for a runner in ``repos`` (``owner/name``): the safety net for lost webhooks.

        Per repository, conditional listings of workflow runs with status ``queued`` and ``in_progress`` (a run
        in progress can still have queued jobs), then the jobs of each such run (also conditional). When
        nothing changed every request is a 304 and costs no rate-limit unit.
        """
        found: dict[int, QueuedJob] = {}
        for repo in repos:
            owner, _, name = repo.partition("/")
            if not owner or not name:
                raise ValueError(f"{repo!r} is not a repository like owner/name")
            runs_url = f"/repos/{owner}/{name}/actions/runs"
            run_ids: list[int] = []
            for status in ("queued", "in_progress"):
                runs = self._paginate(
                    runs_url, "workflow_runs", operation="queued_jobs", params={"status": status}
                )
                for run in runs:
                    try:
                        run_ids.append(int(run["id"]))
                    except (KeyError, TypeError, ValueError):
                        raise GitHubError(
                            f"GET {runs_url}: unexpected response shape (run without id)"
                        ) from None
            for run_id in dict.fromkeys(run_ids):
                jobs_url = f"/repos/{owner}/{name}/actions/runs/{run_id}/jobs"
                for job in self._paginate(jobs_url, "jobs", operation="queued_jobs"):
                    queued = self._queued_job(job, repo, run_id, jobs_url)
                    if queued is not None:
                        found[queued.id] = queued
        return sorted(found.values(), key=lambda job: (job.created_at, job.id))

    def list_hooks(self, path: GitHubPath) -> list[WebHook]:
        """The webhooks of an organisation or repository (to find ours by its URL)."""
        url = f"{self._hooks_prefix(path)}/hooks"
        hooks = []
        for item in self._paginate(url, None, operation="hook_deliveries"):
            try:
                config = item.get("config") or {}
                hooks.append(
                    WebHook(
                        id=int(item["id"]),
                        url=str(config.get("url") or ""),
                        events=tuple(str(e) for e in item.get("events") or ()),
                        active=bool(item.get("active", True)),
                    )
                )
            except (AttributeError, KeyError, TypeError, ValueError):
                raise GitHubError(f"GET {url}: unexpected response shape (hook needs id)") from None
        return hooks

    def hook_deliveries(
        self, path: GitHubPath, hook_id: int, *, since: float | None = None
    ) -> list[HookDelivery]:
        """Deliveries of a webhook, newest first, back to ``since`` (epoch seconds) when given.

        GitHub keeps deliveries for a few days and does not redeliver failed ones by itself; the manager
        compares these with what it received and asks :meth:`redeliver` for the failed ones.
        """
        url = f"{self._hooks_prefix(path)}/hooks/{int(hook_id)}/deliveries"
        out = []
        for item in self._paginate(url, None, operation="hook_deliveries"):
            try:
                delivery = HookDelivery(
                    id=int(item["id"]),
                    guid=str(item["guid"]),
                    delivered_at=parse_timestamp(item.get("delivered_at")) or 0.0,
                    status_code=int(item.get("status_code") or 0),
                    event=str(item.get("event") or ""),
                    action=item.get("action") or None,
                    redelivery=bool(item.get("redelivery", False)),
                )
            except (AttributeError, KeyError, TypeError, ValueError):
                raise GitHubError(
                    f"GET {url}: unexpected response shape (delivery needs id and guid)"
                ) from None
            if since is not None and delivery.delivered_at and delivery.delivered_at < since:
                break
            out.append(delivery)
        return out

    def redeliver(self, path: GitHubPath, hook_id: int, delivery_id: int) -> bool:
        """Ask GitHub to deliver a webhook delivery again; ``False`` when it no longer exists (404).

        Retried on 5xx: a redelivery carries the original delivery GUID, which the webhook intake
        deduplicates, so a duplicate attempt is harmless.
        """
        url = f"{self._hooks_prefix(path)}/hooks/{int(hook_id)}/deliveries/{int(delivery_id)}/attempts"
        reply = self._request(
            "POST", url, operation="redeliver", expected=(202, 200, 201), missing_ok=True
        )
        if reply.status == 404:
            return False
        logger.info(
            "webhook delivery %s of hook %s at %s redelivery requested", delivery_id, hook_id, path
        )
        return True

    def stats(self) -> dict[str, Any]:
        """Requests, rate-limit units and 304s (total and per operation) and the last budget seen.

        Keys: ``requests``, ``rate_limit_units`` (every response but a 304), ``not_modified``, ``retries``,
        ``rate_limit_waits``, ``waited_seconds``, ``by_operation`` (same counters per public method),
        ``remaining``, ``reset``, ``limit``, ``used`` (from the latest response) and ``budgets`` per resource.
        """
        with self._lock:
            by_op = {name: op.as_dict() for name, op in self._ops.items()}
            totals = {
                key: sum(op[key] for op in by_op.values())
                for key in (
                    "requests",
                    "rate_limit_units",
                    "not_modified",
                    "retries",
                    "rate_limit_waits",
                    "errors",
                )
            }
            return {
                **totals,
                "waited_seconds": round(self._waited, 3),
                "by_operation": by_op,
                "remaining": self._last.remaining,
                "reset": self._last.reset,
                "limit": self._last.limit,
                "used": self._last.used,
                "budgets": {
                    res: {
                        "limit": b.limit,
                        "remaining": b.remaining,
                        "used": b.used,
                        "reset": b.reset,
                    }
                    for res, b in self._budgets.items()
                },
            }

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    # ------------------------------------------------------------------------------ internals
    @staticmethod
    def _hooks_prefix(path: GitHubPath) -> str:
        if path.kind == "enterprise":
            raise GitHubError(
                f"{path}: enterprises have no webhook deliveries API; use an org or a repository"
            )
        return path.api_prefix

    def _token(self, path: GitHubPath, kind: str, operation: str) -> str:
        url = f"{path.api_prefix}/actions/runners/{kind}"
        reply = self._request("POST", url, operation=operation, expected=(201, 200))
        token = reply.body.get("token") if isinstance(reply.body, Mapping) else None
        if not token:
            raise GitHubError(f"POST {url}: unexpected response shape (no token)")
        return str(token)

    @staticmethod
    def _runner(item: Any, path: GitHubPath, url: str) -> GitHubRunner:
        try:
            labels = tuple(
                str(label["name"]) if isinstance(label, Mapping) else str(label)
                for label in item.get("labels") or ()
            )
            return GitHubRunner(
                id=int(item["id"]),
                name=str(item["name"]),
                os=str(item.get("os") or "unknown"),
                status=str(item.get("status") or "offline"),
                busy=bool(item.get("busy", False)),
                labels=labels,
                owner=str(path),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise GitHubError(
                f"GET {url}: unexpected response shape (runner needs id and name)"
            ) from None

    def _queued_job(self, job: Any, repo: str, run_id: int, url: str) -> QueuedJob | None:
        if not isinstance(job, Mapping):
            raise GitHubError(f"GET {url}: unexpected response shape (job is not an object)")
        if job.get("status") != "queued":
            return None
        try:
            job_id = int(job["id"])
        except (KeyError, TypeError, ValueError):
            raise GitHubError(f"GET {url}: unexpected response shape (job without id)") from None
        created = parse_timestamp(job.get("created_at")) or parse_timestamp(job.get("started_at"))
        labels = job.get("labels") or ()
        try:
            if not isinstance(labels, list | tuple):
                raise TypeError("labels is not a list")
            job_run_id = int(job.get("run_id") or run_id)
        except (TypeError, ValueError):
            raise GitHubError(
                f"GET {url}: unexpected response shape (job {job_id} run_id or labels)"
            ) from None
        runner_name = job.get("runner_name")
        return QueuedJob(
            id=job_id,
            run_id=job_run_id,
            repo=repo,
            labels=tuple(str(label) for label in labels),
            status="queued",
            runner_name=str(runner_name) if runner_name else None,
            created_at=created if created is not None else self._clock(),
        )

    def _paginate(
        self, path: str, key: str | None, *, operation: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[Any]:
        """Yield the items of every page (``body[key]``, or the body itself when ``key`` is None)."""
        url: str | None = _with_params(self.url + path, {**(params or {}), "per_page": PER_PAGE})
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise GitHubError(f"GET {path}: pagination loops or exceeds {MAX_PAGES} pages")
            seen.add(url)
            reply = self._request("GET", url, operation=operation)
            items = (
                reply.body.get(key)
                if key is not None and isinstance(reply.body, Mapping)
                else reply.body
            )
            if not isinstance(items, list):
                raise GitHubError(
                    f"GET {path}: unexpected response shape (expected a list{f' in {key!r}' if key else ''})"
                )
            yield from items
            url = reply.next_url

    def _request(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        json_body: Any = None,
        expected: tuple[int, ...] = (200,),
        missing_ok: bool = False,
        retry: bool = True,
    ) -> _Reply:
        """One logical call: rate-limit gate, send, retries on transient failures, error mapping."""
        full = url if url.startswith(("http://", "https://")) else self.url + url
        if _origin(full) != self._origin:
            raise GitHubError(
                f"{method} {urlsplit(full).path}: refusing to send the token to another host"
            )
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._max_attempts if retry else 1),
            wait=lambda state: backoff_delay(
                state.attempt_number, initial=self._backoff_initial, maximum=self._backoff_max
            ),
            retry=tenacity.retry_if_exception_type(_TransientError),
            sleep=self._sleep,
            before_sleep=lambda state: self._on_retry(operation, method, full, state),
            reraise=True,
        )
        try:
            return retrying(self._attempt, method, full, operation, json_body, expected, missing_ok)
        except _TransientError as exc:
            with self._lock:
                self._ops[operation].errors += 1
            attempts = self._max_attempts if retry else 1
            raise GitHubError(
                f"{exc} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})",
                status=exc.status,
            ) from None
        except GitHubError:
            with self._lock:
                self._ops[operation].errors += 1
            raise

    def _on_retry(
        self, operation: str, method: str, url: str, state: tenacity.RetryCallState
    ) -> None:
        with self._lock:
            self._ops[operation].retries += 1
        outcome = state.outcome
        reason = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "github %s %s failed (%s); attempt %d, retrying in %.2fs",
            method,
            urlsplit(url).path,
            reason,
            state.attempt_number,
            delay,
        )

    def _attempt(
        self,
        method: str,
        url: str,
        operation: str,
        json_body: Any,
        expected: tuple[int, ...],
        missing_ok: bool,
    ) -> _Reply:
        """Send until the answer is not a rate limit (each wait bounded by ``max_wait``); map the answer."""
        path = urlsplit(url).path
        what = f"{method} {path}"
        for repeat in range(MAX_RATE_LIMIT_WAITS + 1):
            self._gate(operation, what)
            headers = dict(self._headers)
            cached = None
            if method == "GET":
                with self._lock:
                    cached = self._cache.get(url)
                    if cached is not None:
                        self._cache.move_to_end(url)
                if cached is not None:
                    headers["If-None-Match"] = cached[0]
            try:
                resp = self._session.request(
                    method, url, headers=headers, json=json_body, timeout=self.timeout
                )
            except requests.Timeout:
                self._count(operation, sent=True)
                raise _TransientError(
                    f"{what}: no answer within {self.timeout:g}s (timeout)"
                ) from None
            except requests.RequestException as exc:
                self._count(operation, sent=True)
                raise _TransientError(
                    f"{what}: connection to {self._origin} failed ({type(exc).__name__})"
                ) from None
            try:
                reply = self._handle(
                    resp, method, url, what, operation, cached, expected, missing_ok, repeat
                )
            finally:
                resp.close()
            if reply is not None:
                return reply
        raise RateLimited(
            f"{what}: still rate limited after {MAX_RATE_LIMIT_WAITS} waits",
            retry_at=self._blocked_until,
        )

    def _handle(
        self,
        resp: requests.Response,
        method: str,
        url: str,
        what: str,
        operation: str,
        cached: tuple[str, Any, str | None] | None,
        expected: tuple[int, ...],
        missing_ok: bool,
        repeat: int,
    ) -> _Reply | None:
        """Map one response to a reply, an exception, or ``None`` (rate limited and waited: send again)."""
        status = resp.status_code
        now = self._clock()
        self._note_budget(operation, resp.headers, now)
        if status == 304 and cached is not None:
            self._count(operation, sent=True, not_modified=True)
            return _Reply(status=200, body=cached[1], next_url=cached[2], not_modified=True)
        self._count(operation, sent=True, unit=True)
        if status in (403, 429):
            message = _error_message(resp)
            wait = rate_limit_wait(status, resp.headers, now, message=message, repeat=repeat)
            if wait is None:
                raise GitHubAuthError(
                    f"{what}: GitHub refused the operation (403{': ' + message if message else ''}); "
                    "check the token's permissions for this target",
                    status=status,
                )
            self._wait_rate_limit(operation, what, status, wait, now)
            return None
        if status == 401:
            raise GitHubAuthError(
                "GitHub rejected the token (401): check the token's scopes", status=401
            )
        if status >= 500:
            raise _TransientError(f"{what}: GitHub answered {status}", status=status)
        if status == 404 and missing_ok:
            return _Reply(status=404, body=None, next_url=None)
        if status not in expected:
            message = _error_message(resp)
            raise GitHubError(
                f"{what}: GitHub answered {status}{': ' + message if message else ''}",
                status=status,
            )
        body: Any = None
        if status != 204 and resp.content:
            try:
                body = resp.json()
            except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                raise GitHubError(f"{what}: GitHub sent malformed JSON", status=status) from None
        next_url = parse_link_next(resp.headers.get("Link"))
        if next_url is not None and _safe_origin(next_url) != self._origin:
            raise GitHubError(
                f"{what}: pagination link points at another host; not followed", status=status
            )
        if method == "GET":
            etag = resp.headers.get("ETag")
            with self._lock:
                if etag:
                    self._cache[url] = (etag, body, next_url)
                    self._cache.move_to_end(url)
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
                else:
                    self._cache.pop(url, None)
        return _Reply(status=status, body=body, next_url=next_url)

    def _gate(self, operation: str, what: str) -> None:
        """Wait until a request may be sent: after any rate-limit block, the reset of a spent budget, and pacing."""
        while True:
            now = self._clock()
            with self._lock:
                budget = self._budgets.get(self._op_resource.get(operation, "core"))
                until = self._blocked_until
                if budget is not None and budget.remaining == 0 and budget.reset is not None:
                    until = max(until, budget.reset + RESET_MARGIN)
                if until > now + self.max_wait:
                    self._blocked_until = max(self._blocked_until, until)
                    raise RateLimited(
                        f"{what}: GitHub rate limit; next request allowed at {until:.0f} "
                        f"(in {until - now:.0f}s, more than max_wait {self.max_wait:g}s)",
                        retry_at=until,
                    )
                if until <= now:
                    delay = pace_delay(
                        budget or RateLimitInfo(),
                        now,
                        reserve_fraction=self._reserve_fraction,
                        max_delay=self._pace_max,
                    )
                    slot = max(now, self._next_slot)
                    self._next_slot = slot + delay
                    wait = slot - now
                    if wait <= 0:
                        return
                    self._waited += wait
                else:
                    wait = until - now
                    self._waited += wait
            if until > now:
                logger.info("github rate limit: waiting %.1fs before %s", wait, what)
            self._sleep(wait)
            if until <= now:
                return

    def _wait_rate_limit(
        self, operation: str, what: str, status: int, wait: float, now: float
    ) -> None:
        """Record a rate-limit answer: block every sender until then, or raise when it is too long."""
        retry_at = now + wait
        with self._lock:
            self._blocked_until = max(self._blocked_until, retry_at)
            self._ops[operation].rate_limit_waits += 1
        if wait > self.max_wait:
            raise RateLimited(
                f"{what}: GitHub rate limit ({status}); retry allowed in {wait:.0f}s, more than max_wait {self.max_wait:g}s",
                retry_at=retry_at,
                status=status,
            )
        logger.warning(
            "github rate limit (%d) on %s: waiting %.1fs, sending nothing meanwhile",
            status,
            what,
            wait,
        )

    def _note_budget(self, operation: str, headers: Mapping[str, str], now: float) -> None:
        info = parse_rate_limit(headers)
        if info.remaining is None and info.limit is None:
            return
        resource = info.resource or "core"
        with self._lock:
            self._budgets[resource] = info
            self._op_resource[operation] = resource
            self._last = info
        if (
            info.remaining is not None
            and info.limit
            and info.remaining < info.limit * self._reserve_fraction
        ):
            logger.debug(
                "github budget low: %s of %s left for %s", info.remaining, info.limit, resource
            )

    def _count(
        self, operation: str, *, sent: bool, unit: bool = False, not_modified: bool = False
    ) -> None:
        with self._lock:
            op = self._ops[operation]
            op.requests += int(sent)
            op.rate_limit_units += int(unit)
            op.not_modified += int(not_modified)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _safe_origin(url: str) -> str | None:
    """The origin of ``url``, or ``None`` when it cannot be parsed (e.g. ``http://[bad``)."""
    try:
        return _origin(url)
    except ValueError:
        return None


def _with_params(url: str, params: Mapping[str, Any]) -> str:
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, dict(params))
    return str(prepared.url)


def _error_message(resp: requests.Response) -> str:
    """GitHub's ``message`` field of an error body, shortened; empty when there is none."""
    try:
        body = resp.json()
    except (ValueError, RecursionError):
        return ""
    message = body.get("message") if isinstance(body, Mapping) else None
    return str(message)[:200] if message else ""
