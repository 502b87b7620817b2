"""In-memory model of the slice of GitHub the emulator serves, and its rules.

Everything here is plain data guarded by one re-entrant lock (``EmulatorState.lock``); the HTTP
layers call the methods below and render the results. Job routing follows GitHub's documented
behaviour: a queued job goes to an online, idle runner whose labels contain all of the job's
labels (case-insensitive, ``self-hosted`` implied) and whose runner group may serve the repo.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from github_emulator.settings import Seed, Settings

logger = logging.getLogger("github_emulator")

READ_ONLY_LABELS = frozenset({"self-hosted", "linux", "x64", "arm64", "arm", "macos", "windows"})
JOB_STATUSES = ("waiting", "queued", "in_progress", "completed")
CONCLUSIONS = ("success", "failure", "cancelled", "skipped")
DEFAULT_GROUP_ID = 1
DEFAULT_GROUP_NAME = "Default"
MAX_STEP_OUTPUT = 64 * 1024


def token_key(token: str) -> str:
    """A stable, non-secret name for a token (used in stats and logs)."""
    digest = hashlib.sha256(token.encode()).hexdigest()[:8]
    return f"{token[:4]}...{digest}"


class EmulatorError(Exception):
    """An error that maps onto a GitHub-shaped error response."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[Any] | None = None,
        headers: dict[str, str] | None = None,
        documentation_url: str = "https://docs.github.com/rest",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}
        self.documentation_url = documentation_url

    def body(self) -> dict[str, Any]:
        """The JSON error body, shaped like GitHub's."""
        out: dict[str, Any] = {"message": self.message, "documentation_url": self.documentation_url}
        if self.errors is not None:
            out["errors"] = self.errors
        out["status"] = str(self.status)
        return out


def not_found() -> EmulatorError:
    return EmulatorError(404, "Not Found")


def validation_failed(message: str, errors: list[Any] | None = None) -> EmulatorError:
    return EmulatorError(422, message, errors)


@dataclass
class Org:
    login: str
    id: int
    created_at: float


@dataclass
class Repo:
    owner: str
    name: str
    id: int
    created_at: float
    private: bool = True

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class Enterprise:
    slug: str
    id: int


@dataclass
class Token:
    value: str
    key: str
    orgs: set[str]
    repos: set[str]
    enterprises: set[str]
    index: int


@dataclass
class RunnerGroup:
    id: int
    org: str
    name: str
    repos: list[str] | None
    default: bool = False


@dataclass
class Label:
    id: int
    name: str
    type: str


@dataclass
class Runner:
    id: int
    name: str
    scope_kind: str  # "repo" | "org" | "enterprise"
    scope: str  # "owner/repo" | "org" | "enterprise" (as declared)
    labels: list[Label]
    runner_group_id: int
    ephemeral: bool
    jit: bool
    secret: str
    created_at: float
    os: str = "unknown"
    arch: str | None = None
    version: str | None = None
    hostname: str | None = None
    connected_at: float | None = None
    last_seen: float | None = None
    active_polls: int = 0
    disconnected: bool = False
    job_id: int | None = None
    simulated: bool = False
    sim_complete_at: float | None = None
    jobs_done: int = 0

    def label_names(self) -> set[str]:
        names = {label.name.lower() for label in self.labels}
        names.add("self-hosted")
        return names


@dataclass
class Step:
    number: int
    name: str
    command: str
    timeout: float | None = None
    continue_on_error: bool = False
    status: str = "queued"
    conclusion: str | None = None
    exit_code: int | None = None
    output: str = ""
    started_at: float | None = None
    completed_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "name": self.name,
            "command": self.command,
            "status": self.status,
            "conclusion": self.conclusion,
            "exit_code": self.exit_code,
            "output": self.output,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
        }


@dataclass
class Job:
    id: int
    run_id: int
    repo: str
    name: str
    workflow_name: str
    labels: list[str]
    steps: list[Step]
    status: str
    queued_at: float
    head_sha: str
    head_branch: str = "main"
    runner_group: int | None = None
    conclusion: str | None = None
    runner_id: int | None = None
    runner_name: str | None = None
    runner_group_id: int | None = None
    runner_group_name: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    cancel_requested: bool = False
    sim_duration: float = 0.0
    sim_conclusion: str = "success"
    run_attempt: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "repo": self.repo,
            "name": self.name,
            "workflow_name": self.workflow_name,
            "labels": list(self.labels),
            "runner_group": self.runner_group,
            "status": self.status,
            "conclusion": self.conclusion,
            "runner_id": self.runner_id,
            "runner_name": self.runner_name,
            "runner_group_id": self.runner_group_id,
            "runner_group_name": self.runner_group_name,
            "queued_at": self.queued_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "steps": [step.as_dict() for step in self.steps],
        }


@dataclass
class Run:
    id: int
    repo: str
    name: str
    head_sha: str
    head_branch: str
    created_at: float
    run_number: int
    job_ids: list[int] = field(default_factory=list)
    updated_at: float = 0.0


@dataclass
class Hook:
    id: int
    scope_kind: str  # "org" | "repo"
    scope: str
    url: str
    secret: str | None
    events: list[str]
    created_at: float
    active: bool = True
    updated_at: float = 0.0


@dataclass
class Delivery:
    id: int
    guid: str
    hook_id: int
    event: str
    action: str | None
    body: bytes
    redelivery: bool
    repository_id: int | None
    created_at: float
    delivered_at: float | None = None
    duration: float = 0.0
    status: str = "pending"
    status_code: int = 0
    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str = ""
    url: str = ""

    @property
    def done(self) -> bool:
        return self.status != "pending"


@dataclass
class RegistrationToken:
    token: str
    kind: str  # "registration" | "remove"
    scope_kind: str
    scope: str
    expires_at: float


def _lower(items: Iterable[str]) -> set[str]:
    return {item.lower() for item in items}


class EmulatorState:
    """The emulated GitHub: accounts, tokens, runners, jobs, hooks and deliveries.

    Public methods take the lock themselves; callers that need several calls to be atomic may
    hold ``lock`` around them (it is re-entrant). ``changed`` is notified whenever a job or runner
    changes in a way a waiting agent could care about.
    """

    def __init__(self, settings: Settings | None = None, seed: Seed | None = None) -> None:
        self.settings = settings or Settings()
        self.seed = seed or Seed()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.base_url = "http://127.0.0.1"
        self.port: int | None = None
        self.closed = False
        # Called (outside of no lock guarantee) with (hook, delivery) for each new delivery.
        self.on_delivery: Callable[[Hook, Delivery], None] | None = None
        self._reset_data()
        self.apply_seed(self.seed)

    # ------------------------------------------------------------------ world set-up
    def _reset_data(self) -> None:
        self._ids = itertools.count(1)
        self._label_ids: dict[str, int] = {}
        self._label_counter = itertools.count(1)
        self.orgs: dict[str, Org] = {}
        self.repos: dict[str, Repo] = {}
        self.enterprises: dict[str, Enterprise] = {}
        self.tokens: dict[str, Token] = {}
        self.groups: dict[tuple[str, int], RunnerGroup] = {}
        self.runners: dict[int, Runner] = {}
        self.jobs: dict[int, Job] = {}
        self.queued: dict[int, Job] = {}  # index of jobs waiting for a runner
        self.runs: dict[int, Run] = {}
        self.hooks: dict[int, Hook] = {}
        self.deliveries: dict[int, Delivery] = {}
        self.reg_tokens: dict[str, RegistrationToken] = {}
        self._group_counter = itertools.count(2)
        self._run_numbers: dict[str, int] = {}

    def _next_id(self) -> int:
        return next(self._ids)

    def apply_seed(self, seed: Seed) -> None:
        """Create what ``seed`` declares; tokens without explicit grants get all of it."""
        with self.lock:
            for org in seed.orgs:
                self.add_org(org)
            for enterprise in seed.enterprises:
                self.add_enterprise(enterprise)
            for full in seed.repos:
                owner, _, name = full.partition("/")
                self.add_repo(owner, name)
            for value, grants in seed.tokens.items():
                if grants is None:
                    self.add_token(value, seed.orgs, seed.repos, seed.enterprises)
                else:
                    self.add_token(
                        value,
                        grants.get("orgs", ()),
                        grants.get("repos", ()),
                        grants.get("enterprises", ()),
                    )
            for hook in seed.hooks:
                self.add_hook(
                    hook["url"],
                    hook.get("secret"),
                    org=hook.get("org"),
                    repo=hook.get("repo"),
                    events=hook.get("events", ("workflow_job",)),
                )

    def reset(self, full: bool = False) -> None:
        """Forget everything (``full``) or go back to the start-up world."""
        with self.lock:
            self._reset_data()
            if not full:
                self.apply_seed(self.seed)
            self.changed.notify_all()

    def add_org(self, login: str) -> Org:
        with self.lock:
            key = login.lower()
            if key not in self.orgs:
                self.orgs[key] = Org(login=login, id=self._next_id(), created_at=time.time())
                self.groups[(key, DEFAULT_GROUP_ID)] = RunnerGroup(
                    id=DEFAULT_GROUP_ID,
                    org=login,
                    name=DEFAULT_GROUP_NAME,
                    repos=None,
                    default=True,
                )
            return self.orgs[key]

    def add_repo(self, owner: str, name: str, private: bool = True) -> Repo:
        with self.lock:
            key = f"{owner}/{name}".lower()
            if key not in self.repos:
                self.repos[key] = Repo(
                    owner=owner,
                    name=name,
                    id=self._next_id(),
                    created_at=time.time(),
                    private=private,
                )
            return self.repos[key]

    def add_enterprise(self, slug: str) -> Enterprise:
        with self.lock:
            key = slug.lower()
            if key not in self.enterprises:
                self.enterprises[key] = Enterprise(slug=slug, id=self._next_id())
            return self.enterprises[key]

    def add_token(
        self,
        value: str,
        orgs: Iterable[str] = (),
        repos: Iterable[str] = (),
        enterprises: Iterable[str] = (),
    ) -> Token:
        """Grant ``value`` access; granting again widens the existing grants."""
        if not value:
            raise validation_failed("token must not be empty")
        with self.lock:
            token = self.tokens.get(value)
            if token is None:
                token = Token(
                    value=value,
                    key=token_key(value),
                    orgs=set(),
                    repos=set(),
                    enterprises=set(),
                    index=len(self.tokens) + 1,
                )
                self.tokens[value] = token
            token.orgs |= _lower(orgs)
            token.repos |= _lower(repos)
            token.enterprises |= _lower(enterprises)
            return token

    def add_runner_group(
        self, org: str, name: str, repos: Iterable[str] | None = None
    ) -> RunnerGroup:
        with self.lock:
            org_obj = self.orgs.get(org.lower())
            if org_obj is None:
                raise not_found()
            for group in self.groups_of(org):
                if group.name.lower() == name.lower():
                    raise EmulatorError(409, f"Runner group {name!r} already exists")
            group = RunnerGroup(
                id=next(self._group_counter),
                org=org_obj.login,
                name=name,
                repos=None if repos is None else sorted(_lower(repos)),
            )
            self.groups[(org.lower(), group.id)] = group
            self.changed.notify_all()
            return group

    def groups_of(self, org: str) -> list[RunnerGroup]:
        with self.lock:
            key = org.lower()
            return sorted((g for (o, _), g in self.groups.items() if o == key), key=lambda g: g.id)

    def group(self, org: str, group_id: int) -> RunnerGroup | None:
        return self.groups.get((org.lower(), group_id))

    def add_hook(
        self,
        url: str,
        secret: str | None,
        org: str | None = None,
        repo: str | None = None,
        events: Iterable[str] = ("workflow_job",),
    ) -> Hook:
        if bool(org) == bool(repo):
            raise validation_failed("a hook needs exactly one of 'org' or 'repo'")
        with self.lock:
            if org is not None and org.lower() not in self.orgs:
                raise not_found()
            if repo is not None and repo.lower() not in self.repos:
                raise not_found()
            now = time.time()
            hook = Hook(
                id=self._next_id(),
                scope_kind="org" if org else "repo",
                scope=(org or repo or ""),
                url=url,
                secret=secret or None,
                events=list(events),
                created_at=now,
                updated_at=now,
            )
            self.hooks[hook.id] = hook
            return hook

    def delete_hook(self, hook: Hook) -> None:
        with self.lock:
            self.hooks.pop(hook.id, None)

    # ------------------------------------------------------------------ access
    def token(self, value: str) -> Token | None:
        return self.tokens.get(value)

    def tokens_index(self, key: str) -> int:
        """The position of the token named ``key`` (its "user ID" in error messages)."""
        for token in self.tokens.values():
            if token.key == key:
                return token.index
        return 0

    def org_for(self, token: Token, login: str) -> Org:
        """The org if ``token`` may administer it, else 404 (GitHub hides private resources)."""
        org = self.orgs.get(login.lower())
        if org is None or login.lower() not in token.orgs:
            raise not_found()
        return org

    def repo_for(self, token: Token, owner: str, name: str) -> Repo:
        full = f"{owner}/{name}".lower()
        repo = self.repos.get(full)
        if repo is None:
            raise not_found()
        if full not in token.repos and owner.lower() not in token.orgs:
            raise not_found()
        return repo

    def enterprise_for(self, token: Token, slug: str) -> Enterprise:
        ent = self.enterprises.get(slug.lower())
        if ent is None or slug.lower() not in token.enterprises:
            raise not_found()
        return ent

    def repos_of_org(self, token: Token, login: str) -> list[Repo]:
        org = self.orgs.get(login.lower())
        if org is None:
            raise not_found()
        owned = [r for r in self.repos.values() if r.owner.lower() == login.lower()]
        if login.lower() not in token.orgs:
            owned = [r for r in owned if r.full_name.lower() in token.repos]
            if not owned:
                raise not_found()
        return sorted(owned, key=lambda r: r.id)

    # ------------------------------------------------------------------ labels and runners
    def label(self, name: str, kind: str | None = None) -> Label:
        key = name.lower()
        if key not in self._label_ids:
            self._label_ids[key] = next(self._label_counter)
        if kind is None:
            kind = "read-only" if key in READ_ONLY_LABELS else "custom"
        return Label(id=self._label_ids[key], name=name, type=kind)

    def scope_key(self, scope_kind: str, scope: str) -> tuple[str, str]:
        return scope_kind, scope.lower()

    def create_runner(
        self,
        scope_kind: str,
        scope: str,
        name: str,
        labels: Iterable[str],
        runner_group_id: int = DEFAULT_GROUP_ID,
        ephemeral: bool = True,
        jit: bool = True,
        replace: bool = False,
        simulated: bool = False,
        default_labels: Iterable[str] = (),
    ) -> Runner:
        """Register a runner in a scope; 409 if the name is taken there (unless ``replace``)."""
        default_labels = list(default_labels)
        with self.lock:
            if scope_kind == "org":
                if self.group(scope, runner_group_id) is None:
                    raise not_found()
            elif scope_kind == "enterprise" and runner_group_id != DEFAULT_GROUP_ID:
                raise not_found()
            key = self.scope_key(scope_kind, scope)
            for other in list(self.runners.values()):
                if self.scope_key(other.scope_kind, other.scope) == key and other.name == name:
                    if not replace:
                        raise EmulatorError(
                            409, f"Already exists - A runner with the name {name} already exists."
                        )
                    self._remove_runner(other, reason="replaced")
            seen: set[str] = set()
            label_objs: list[Label] = []
            for label_name in [*default_labels, *labels]:
                if label_name.lower() in seen:
                    continue
                seen.add(label_name.lower())
                default = label_name in default_labels
                label_objs.append(self.label(label_name, "read-only" if default else None))
            now = time.time()
            runner = Runner(
                id=self._next_id(),
                name=name,
                scope_kind=scope_kind,
                scope=scope,
                labels=label_objs,
                runner_group_id=runner_group_id if scope_kind == "org" else DEFAULT_GROUP_ID,
                ephemeral=ephemeral,
                jit=jit,
                secret=secrets.token_urlsafe(32),
                created_at=now,
                simulated=simulated,
            )
            if simulated:
                runner.os = "linux"
                runner.arch = "x64"
                runner.version = self.settings.runner_version
                runner.connected_at = runner.last_seen = now
            self.runners[runner.id] = runner
            logger.info(
                "event=runner_registered runner_id=%s name=%s scope=%s:%s jit=%s ephemeral=%s",
                runner.id,
                runner.name,
                scope_kind,
                scope,
                jit,
                ephemeral,
            )
            self.changed.notify_all()
            return runner

    def runners_in(self, scope_kind: str, scope: str, name: str | None = None) -> list[Runner]:
        with self.lock:
            key = self.scope_key(scope_kind, scope)
            return sorted(
                (
                    r
                    for r in self.runners.values()
                    if self.scope_key(r.scope_kind, r.scope) == key
                    and (name is None or r.name == name)
                ),
                key=lambda r: r.id,
            )

    def runner_in(self, scope_kind: str, scope: str, runner_id: int) -> Runner:
        runner = self.runners.get(runner_id)
        if runner is None or self.scope_key(runner.scope_kind, runner.scope) != self.scope_key(
            scope_kind, scope
        ):
            raise not_found()
        return runner

    def delete_runner(self, runner: Runner) -> None:
        """GitHub refuses to remove a runner that is running a job (422)."""
        with self.lock:
            if runner.job_id is not None:
                raise validation_failed(
                    f'Bad request - Runner "{runner.name}" is still running a job"'
                )
            self._remove_runner(runner, reason="deleted")

    def _remove_runner(self, runner: Runner, reason: str) -> None:
        self.runners.pop(runner.id, None)
        logger.info(
            "event=runner_removed runner_id=%s name=%s reason=%s", runner.id, runner.name, reason
        )
        self.changed.notify_all()

    def is_online(self, runner: Runner, now: float | None = None) -> bool:
        if runner.simulated:
            return True
        if runner.disconnected or runner.last_seen is None:
            return False
        if runner.active_polls > 0:
            return True
        now = time.time() if now is None else now
        return now - runner.last_seen <= self.settings.offline_after

    def reported_busy(self, runner: Runner, now: float | None = None) -> bool:
        """The REST ``busy`` flag, which lags the real state by ``busy_lag`` seconds."""
        if runner.job_id is None:
            return False
        job = self.jobs.get(runner.job_id)
        if job is None or job.started_at is None:
            return False
        now = time.time() if now is None else now
        return now - job.started_at >= self.settings.busy_lag

    def set_custom_labels(self, runner: Runner, names: list[str], add: bool) -> None:
        with self.lock:
            if not names or len(names) > 100:
                raise validation_failed("Validation Failed", ["labels must have 1 to 100 items"])
            kept = runner.labels if add else [lb for lb in runner.labels if lb.type == "read-only"]
            present = {lb.name.lower() for lb in kept}
            for name in names:
                if name.lower() not in present:
                    kept = [*kept, self.label(name, "custom")]
                    present.add(name.lower())
            runner.labels = kept
            self.changed.notify_all()

    def remove_custom_labels(self, runner: Runner) -> None:
        with self.lock:
            runner.labels = [lb for lb in runner.labels if lb.type == "read-only"]

    def remove_label(self, runner: Runner, name: str) -> None:
        with self.lock:
            matches = [lb for lb in runner.labels if lb.name.lower() == name.lower()]
            if not matches:
                raise not_found()
            if matches[0].type == "read-only":
                raise validation_failed(f"Cannot remove read-only label {name!r}")
            runner.labels = [lb for lb in runner.labels if lb.name.lower() != name.lower()]

    # ------------------------------------------------------------------ registration tokens
    def issue_token(self, kind: str, scope_kind: str, scope: str) -> RegistrationToken:
        with self.lock:
            value = "A" + secrets.token_hex(14).upper()
            token = RegistrationToken(
                token=value,
                kind=kind,
                scope_kind=scope_kind,
                scope=scope,
                expires_at=time.time() + self.settings.registration_token_ttl,
            )
            self.reg_tokens[value] = token
            return token

    def use_token(self, value: str, kind: str) -> RegistrationToken:
        """A valid, unexpired token of ``kind``; raises 401 otherwise (constant-time compare)."""
        with self.lock:
            found = None
            for candidate in self.reg_tokens.values():
                if hmac.compare_digest(candidate.token.encode(), value.encode()):
                    found = candidate
            if found is None or found.kind != kind or found.expires_at < time.time():
                raise EmulatorError(401, f"invalid or expired {kind} token")
            return found

    def jit_config(self, runner: Runner, agent_url: str, work_folder: str = "_work") -> str:
        """Base64 of the JSON the emulator's runner app needs: agent URL, runner id and secret."""
        config = {
            "v": 1,
            "agent_url": agent_url.rstrip("/"),
            "runner_id": runner.id,
            "runner_name": runner.name,
            "agent_secret": runner.secret,
            "labels": [lb.name for lb in runner.labels],
            "ephemeral": runner.ephemeral,
            "work_folder": work_folder,
            "scope": f"{runner.scope_kind}:{runner.scope}",
            "runner_group_id": runner.runner_group_id,
        }
        return base64.b64encode(json.dumps(config, sort_keys=True).encode()).decode()

    def runner_by_secret(self, runner_id: int, secret: str) -> Runner:
        with self.lock:
            runner = self.runners.get(runner_id)
            if runner is None:
                raise EmulatorError(404, "runner not found (removed or expired)")
            if not hmac.compare_digest(runner.secret.encode(), secret.encode()):
                raise EmulatorError(401, "bad runner credentials")
            return runner

    # ------------------------------------------------------------------ jobs
    def queue_job(
        self,
        repo: str,
        labels: Iterable[str],
        steps: Iterable[Any],
        runner_group: int | str | None = None,
        name: str = "build",
        workflow_name: str = "CI",
        waiting: bool = False,
        duration: float = 0.0,
        conclusion: str = "success",
        head_branch: str = "main",
    ) -> Job:
        """Create a workflow run with one job (``waiting`` jobs need ``approve_job`` first)."""
        with self.lock:
            repo_obj = self.repos.get(repo.lower())
            if repo_obj is None:
                raise not_found()
            group_id: int | None = None
            if runner_group is not None:
                group_id = self._resolve_group(repo_obj, runner_group)
            parsed = [self._parse_step(i, s) for i, s in enumerate(steps, start=1)]
            now = time.time()
            number = self._run_numbers.get(repo_obj.full_name.lower(), 0) + 1
            self._run_numbers[repo_obj.full_name.lower()] = number
            head_sha = hashlib.sha1(f"{repo}{now}{number}".encode()).hexdigest()  # noqa: S324
            run = Run(
                id=self._next_id(),
                repo=repo_obj.full_name,
                name=workflow_name,
                head_sha=head_sha,
                head_branch=head_branch,
                created_at=now,
                run_number=number,
                updated_at=now,
            )
            job = Job(
                id=self._next_id(),
                run_id=run.id,
                repo=repo_obj.full_name,
                name=name,
                workflow_name=workflow_name,
                labels=list(labels),
                steps=parsed,
                status="waiting" if waiting else "queued",
                queued_at=now,
                head_sha=head_sha,
                head_branch=head_branch,
                runner_group=group_id,
                sim_duration=float(duration),
                sim_conclusion=conclusion,
            )
            run.job_ids.append(job.id)
            self.runs[run.id] = run
            self.jobs[job.id] = job
            if job.status == "queued":
                self.queued[job.id] = job
            logger.info(
                "event=job_queued job_id=%s repo=%s labels=%s status=%s",
                job.id,
                job.repo,
                ",".join(job.labels),
                job.status,
            )
            self._emit(job, job.status)
            self.changed.notify_all()
            return job

    def _resolve_group(self, repo: Repo, group: int | str) -> int:
        for g in self.groups_of(repo.owner):
            if (isinstance(group, int) and g.id == group) or (
                isinstance(group, str) and g.name.lower() == group.lower()
            ):
                return g.id
        raise validation_failed(f"unknown runner group {group!r} for {repo.owner}")

    @staticmethod
    def _parse_step(number: int, step: Any) -> Step:
        if isinstance(step, str):
            return Step(number=number, name=f"Run {step}"[:80], command=step)
        if isinstance(step, dict) and isinstance(step.get("command", step.get("run")), str):
            command = str(step.get("command", step.get("run")))
            timeout = step.get("timeout")
            if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
                raise validation_failed("a step timeout is a positive number of seconds")
            return Step(
                number=number,
                name=str(step.get("name") or f"Run {command}"[:80]),
                command=command,
                timeout=None if timeout is None else float(timeout),
                continue_on_error=bool(step.get("continue_on_error", False)),
            )
        raise validation_failed("each step is a command string or {name, command}")

    def job(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise not_found()
        return job

    def approve_job(self, job: Job) -> None:
        with self.lock:
            if job.status != "waiting":
                raise validation_failed(f"job {job.id} is {job.status}, not waiting")
            job.status = "queued"
            self.queued[job.id] = job
            self._emit(job, "queued")
            self.changed.notify_all()

    def cancel_job(self, job: Job) -> None:
        """Queued/waiting jobs complete as cancelled at once; running ones are told to stop."""
        with self.lock:
            if job.status in ("queued", "waiting"):
                self._finish(job, "cancelled")
            elif job.status == "in_progress":
                job.cancel_requested = True
                runner = self.runners.get(job.runner_id or -1)
                if runner is not None and runner.simulated:
                    self._finish(job, "cancelled")

    def _group_allows(self, runner: Runner, job: Job) -> bool:
        if runner.scope_kind == "repo":
            return runner.scope.lower() == job.repo.lower() and job.runner_group in (
                None,
                DEFAULT_GROUP_ID,
            )
        if runner.scope_kind == "enterprise":
            return job.runner_group is None
        owner = job.repo.split("/", 1)[0].lower()
        if runner.scope.lower() != owner:
            return False
        if job.runner_group is not None and runner.runner_group_id != job.runner_group:
            return False
        group = self.group(runner.scope, runner.runner_group_id)
        if group is None:
            return False
        return group.repos is None or job.repo.lower() in group.repos

    def matches(self, runner: Runner, job: Job) -> bool:
        """May ``runner`` take ``job``? Labels ⊇ job labels and the group serves the repo."""
        if job.status != "queued":
            return False
        if not {label.lower() for label in job.labels} <= runner.label_names():
            return False
        return self._group_allows(runner, job)

    def take_job(self, runner: Runner) -> Job | None:
        """Assign the oldest matching queued job to an idle, online ``runner`` (lock held)."""
        if runner.job_id is not None or runner.id not in self.runners:
            return None
        if runner.ephemeral and runner.jobs_done > 0:
            return None
        for job_id in sorted(self.queued):
            job = self.queued[job_id]
            if self.matches(runner, job):
                self._start(job, runner)
                return job
        return None

    def _start(self, job: Job, runner: Runner) -> None:
        now = time.time()
        job.status = "in_progress"
        self.queued.pop(job.id, None)
        job.started_at = now
        job.runner_id = runner.id
        job.runner_name = runner.name
        job.runner_group_id = runner.runner_group_id
        group = (
            self.group(runner.scope, runner.runner_group_id) if runner.scope_kind == "org" else None
        )
        job.runner_group_name = group.name if group else DEFAULT_GROUP_NAME
        runner.job_id = job.id
        if runner.simulated:
            runner.sim_complete_at = now + job.sim_duration
        run = self.runs.get(job.run_id)
        if run:
            run.updated_at = now
        logger.info(
            "event=job_started job_id=%s runner_id=%s runner=%s", job.id, runner.id, runner.name
        )
        self._emit(job, "in_progress")

    def step_started(self, runner: Runner, job: Job, number: int) -> None:
        with self.lock:
            step = self._step(runner, job, number)
            step.status = "in_progress"
            step.started_at = time.time()

    def step_finished(
        self,
        runner: Runner,
        job: Job,
        number: int,
        exit_code: int,
        output: str,
        conclusion: str | None,
    ) -> None:
        with self.lock:
            step = self._step(runner, job, number)
            now = time.time()
            step.status = "completed"
            step.started_at = step.started_at or now
            step.completed_at = now
            step.exit_code = exit_code
            step.output = output[:MAX_STEP_OUTPUT]
            step.conclusion = conclusion or ("success" if exit_code == 0 else "failure")
            if step.conclusion not in CONCLUSIONS:
                step.conclusion = "failure"

    def _step(self, runner: Runner, job: Job, number: int) -> Step:
        if job.runner_id != runner.id or job.status != "in_progress":
            raise EmulatorError(409, f"job {job.id} is not running on runner {runner.id}")
        for step in job.steps:
            if step.number == number:
                return step
        raise not_found()

    def complete_job(self, runner: Runner, job: Job, conclusion: str | None) -> bool:
        """Finish ``job``; returns True when the (ephemeral) runner was removed."""
        with self.lock:
            if job.runner_id != runner.id or job.status != "in_progress":
                raise EmulatorError(409, f"job {job.id} is not running on runner {runner.id}")
            if conclusion not in CONCLUSIONS:
                failed = any(
                    s.conclusion == "failure" and not s.continue_on_error for s in job.steps
                )
                conclusion = "failure" if failed else "success"
            if job.cancel_requested:
                conclusion = "cancelled"
            self._finish(job, conclusion)
            return runner.id not in self.runners

    def _finish(self, job: Job, conclusion: str, runner_lost: bool = False) -> None:
        now = time.time()
        job.status = "completed"
        self.queued.pop(job.id, None)
        job.conclusion = conclusion
        job.completed_at = now
        if job.started_at is None:
            job.started_at = now
        for step in job.steps:
            if step.status != "completed":
                step.status = "completed"
                step.conclusion = "cancelled" if conclusion == "cancelled" else "skipped"
                step.started_at = step.started_at or now
                step.completed_at = now
        run = self.runs.get(job.run_id)
        if run:
            run.updated_at = now
        logger.info("event=job_completed job_id=%s conclusion=%s", job.id, conclusion)
        self._emit(job, "completed")
        runner = self.runners.get(job.runner_id or -1)
        if runner is not None and runner.job_id == job.id:
            runner.job_id = None
            runner.sim_complete_at = None
            runner.jobs_done += 1
            # A lost runner stays registered (offline) until someone deletes it, as on GitHub.
            if runner.ephemeral and not runner_lost:
                self._remove_runner(runner, reason="ephemeral runner finished its job")
        self.changed.notify_all()

    def run_status(self, run: Run) -> tuple[str, str | None]:
        jobs = [self.jobs[j] for j in run.job_ids if j in self.jobs]
        statuses = {j.status for j in jobs}
        if statuses == {"completed"}:
            conclusions = {j.conclusion for j in jobs}
            for c in ("failure", "cancelled"):
                if c in conclusions:
                    return "completed", c
            return "completed", "success"
        if "in_progress" in statuses:
            return "in_progress", None
        if "waiting" in statuses:
            return "waiting", None
        return "queued", None

    # ------------------------------------------------------------------ agent presence
    def agent_seen(self, runner: Runner, **facts: Any) -> None:
        with self.lock:
            now = time.time()
            was_online = self.is_online(runner, now)
            runner.last_seen = now
            runner.disconnected = False
            if runner.connected_at is None:
                runner.connected_at = now
            for name, value in facts.items():
                if value is not None:
                    setattr(runner, name, value)
            if not was_online:
                logger.info("event=runner_online runner_id=%s name=%s", runner.id, runner.name)

    def agent_gone(self, runner: Runner) -> None:
        with self.lock:
            runner.disconnected = True
            runner.last_seen = time.time()
            logger.info("event=runner_offline runner_id=%s name=%s", runner.id, runner.name)

    def wait_for_job(self, runner: Runner, timeout: float) -> Job | None:
        """Long-poll: hold the caller until a job is assigned to ``runner`` or ``timeout``."""
        deadline = time.time() + timeout
        with self.changed:
            runner.active_polls += 1
            try:
                self.agent_seen(runner)
                while True:
                    if runner.id not in self.runners or self.closed:
                        return None
                    job = self.take_job(runner)
                    if job is not None:
                        return job
                    remaining = deadline - time.time()
                    if remaining <= 0:
                        return None
                    self.changed.wait(remaining)
            finally:
                runner.active_polls -= 1
                runner.last_seen = time.time()

    # ------------------------------------------------------------------ periodic work
    def tick(self, now: float | None = None) -> None:
        """Expire JIT registrations and tokens, fail jobs of lost runners, drive simulated runners."""
        now = time.time() if now is None else now
        with self.lock:
            for runner in list(self.runners.values()):
                unused = runner.jit and runner.connected_at is None and not runner.simulated
                if unused and now - runner.created_at > self.settings.jit_expiry:
                    self._remove_runner(runner, reason="unused JIT registration expired")
                    continue
                if runner.job_id is not None and not self.is_online(runner, now):
                    job = self.jobs.get(runner.job_id)
                    if job is not None and job.status == "in_progress":
                        logger.info("event=runner_lost runner_id=%s job_id=%s", runner.id, job.id)
                        self._finish(job, "failure", runner_lost=True)
                        continue
                if runner.simulated:
                    if runner.job_id is None:
                        if self.queued:
                            self.take_job(runner)
                    elif runner.sim_complete_at is not None and now >= runner.sim_complete_at:
                        job = self.jobs[runner.job_id]
                        for step in job.steps:
                            step.status, step.exit_code = "completed", 0
                            step.conclusion = "success"
                            step.started_at = step.completed_at = now
                        self._finish(job, job.sim_conclusion)
            for value, reg in list(self.reg_tokens.items()):
                if reg.expires_at < now:
                    del self.reg_tokens[value]

    # ------------------------------------------------------------------ webhooks
    def hooks_for(self, repo: Repo, event: str) -> list[Hook]:
        out = []
        for hook in self.hooks.values():
            if not hook.active or (event not in hook.events and "*" not in hook.events):
                continue
            if (hook.scope_kind == "repo" and hook.scope.lower() == repo.full_name.lower()) or (
                hook.scope_kind == "org" and hook.scope.lower() == repo.owner.lower()
            ):
                out.append(hook)
        return out

    def _emit(self, job: Job, action: str) -> None:
        from github_emulator import render  # local import: render depends on this module

        repo = self.repos.get(job.repo.lower())
        if repo is None:
            return
        hooks = self.hooks_for(repo, "workflow_job")
        if not hooks:
            return
        payload = render.workflow_job_payload(self, job, action, self.base_url)
        body = json.dumps(payload).encode()
        for hook in hooks:
            self.new_delivery(hook, "workflow_job", action, body, repo.id, redelivery=False)

    def new_delivery(
        self,
        hook: Hook,
        event: str,
        action: str | None,
        body: bytes,
        repository_id: int | None,
        redelivery: bool,
        guid: str | None = None,
    ) -> Delivery:
        with self.lock:
            delivery = Delivery(
                id=self._next_id(),
                guid=guid or str(uuid.uuid4()),
                hook_id=hook.id,
                event=event,
                action=action,
                body=body,
                redelivery=redelivery,
                repository_id=repository_id,
                created_at=time.time(),
                url=hook.url,
            )
            self.deliveries[delivery.id] = delivery
        if self.on_delivery is not None:
            self.on_delivery(hook, delivery)
        return delivery

    def deliveries_of(self, hook: Hook) -> list[Delivery]:
        with self.lock:
            return sorted(
                (d for d in self.deliveries.values() if d.hook_id == hook.id),
                key=lambda d: d.id,
                reverse=True,
            )

    def hook_in(self, scope_kind: str, scope: str, hook_id: int) -> Hook:
        hook = self.hooks.get(hook_id)
        if hook is None or hook.scope_kind != scope_kind or hook.scope.lower() != scope.lower():
            raise not_found()
        return hook
