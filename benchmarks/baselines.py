"""The alternatives' observation algorithms, as real HTTP clients against the same GitHub (emulator).

Each baseline does, once per reconcile cycle, what the system it stands for does to learn about its fleet
and its jobs (see ../shared/ANCHORS.md). They share one accounting with
:class:`github_runner_manager.github.GitHubClient`: every request sent is a request, every response but a
``304 Not Modified`` costs one rate-limit unit. The emulator charges the same per token, so each baseline
uses its own token and the emulator's counters confirm the client's.

* :class:`NomadtoolsBaseline` -- nomadtools ``githubrunner``: every cycle, list the repositories of each
  org, each repository's workflows, each workflow's runs that are ``queued`` or ``in_progress``, and the
  jobs of each such run; unconditional.
* :class:`PerRunnerBaseline` -- per-runner polling: GET each known runner's status every cycle.
* :class:`ListAllBaseline` -- list every runner of each org every cycle without conditional requests
  (GARM and the Canonical charm style; no poll for missed webhooks).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

PER_PAGE = 100


@dataclass
class Accounting:
    """Requests, rate-limit units and 304s, total and per operation (GitHubClient's rules)."""

    requests: int = 0
    units: int = 0
    not_modified: int = 0
    by_operation: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rate_limit_units": self.units,
            "not_modified": self.not_modified,
            "by_operation": dict(self.by_operation),
        }


class CountingClient:
    """A minimal GitHub REST client: pagination, optional ETag cache, GitHubClient-level accounting."""

    def __init__(self, url: str, token: str, *, conditional: bool, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.conditional = conditional
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "github-runner-bench-baseline",
            }
        )
        self.stats = Accounting()
        self._etags: dict[str, tuple[str, Any, str | None]] = {}
        self._lock = threading.Lock()

    def get(
        self, path: str, operation: str, params: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One GET (first page only); returns (status, body)."""
        url = self.url + path
        status, body, _next = self._get(url, operation, params)
        return status, body

    def paginate(
        self, path: str, key: str | None, operation: str, params: dict[str, Any] | None = None
    ) -> Iterator[Any]:
        """Every item of every page; a 404 yields nothing."""
        query = {**(params or {}), "per_page": PER_PAGE}
        url: str | None = self.url + path
        first = True
        while url is not None:
            status, body, next_url = self._get(url, operation, query if first else None)
            first = False
            if status == 404:
                return
            items = body.get(key) if key is not None and isinstance(body, dict) else body
            yield from items or []
            url = next_url

    def _get(
        self, url: str, operation: str, params: dict[str, Any] | None
    ) -> tuple[int, Any, str | None]:
        prepared = requests.Request("GET", url, params=params).prepare()
        full = str(prepared.url)
        headers = {}
        cached = self._etags.get(full) if self.conditional else None
        if cached is not None:
            headers["If-None-Match"] = cached[0]
        resp = self.session.get(full, headers=headers, timeout=self.timeout)
        with self._lock:
            self.stats.requests += 1
            self.stats.by_operation[operation] += 1
            if resp.status_code == 304 and cached is not None:
                self.stats.not_modified += 1
                return 200, cached[1], cached[2]
            self.stats.units += 1
        if resp.status_code == 404:
            return 404, None, None
        resp.raise_for_status()
        body = resp.json()
        next_url = resp.links.get("next", {}).get("url")
        if self.conditional and resp.headers.get("ETag"):
            self._etags[full] = (resp.headers["ETag"], body, next_url)
        return resp.status_code, body, next_url

    def close(self) -> None:
        self.session.close()


class Baseline:
    """One alternative's per-cycle observation of the fleet."""

    name = "baseline"
    description = ""

    def __init__(self, client: CountingClient) -> None:
        self.client = client
        self.notes: list[str] = []

    def cycle(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.client.close()


class NomadtoolsBaseline(Baseline):
    """nomadtools ``githubrunner``: every repo x workflow x run (queued / in_progress) x jobs, unconditional.

    Where the GitHub it talks to has no workflows listing (``/repos/{o}/{r}/actions/workflows``, which
    the emulator may lack), it treats each repository as one workflow and lists the repository's runs
    instead; the figure then omits one request per repository per cycle (a lower bound), said in
    :attr:`notes`.
    """

    name = "nomadtools"
    description = (
        "every cycle: list each org's repositories, each repository's workflows, each workflow's runs with "
        "status queued and in_progress, and the jobs of each such run; no conditional requests"
    )

    def __init__(self, client: CountingClient, orgs: Sequence[str]) -> None:
        super().__init__(client)
        self.orgs = list(orgs)
        self.workflows_endpoint = True

    def prepare(self, sample_repo: str) -> None:
        """Find out (outside the measured cycles) whether this GitHub serves the workflows listing."""
        resp = self.client.session.get(
            f"{self.client.url}/repos/{sample_repo}/actions/workflows", timeout=self.client.timeout
        )
        self.workflows_endpoint = resp.status_code != 404
        if not self.workflows_endpoint:
            self.notes.append(
                "the emulator has no /repos/{owner}/{repo}/actions/workflows listing: each repository counts "
                "as one workflow whose runs come from the repository's runs endpoint, so this figure omits "
                "nomadtools' one workflows request per repository per cycle (a lower bound)"
            )

    def _workflows(self, repo: str) -> list[int] | None:
        """Workflow ids of ``repo``; None when this GitHub has no workflows listing."""
        if not self.workflows_endpoint:
            return None
        return [
            int(item["id"])
            for item in self.client.paginate(
                f"/repos/{repo}/actions/workflows", "workflows", "list_repo_workflows"
            )
        ]

    def cycle(self) -> None:
        for org in self.orgs:
            repos = [
                r["full_name"]
                for r in self.client.paginate(f"/orgs/{org}/repos", None, "list_org_repos")
            ]
            for repo in repos:
                workflows = self._workflows(repo)
                runs_paths = (
                    [f"/repos/{repo}/actions/runs"]
                    if workflows is None
                    else [f"/repos/{repo}/actions/workflows/{wid}/runs" for wid in workflows]
                )
                for runs_path in runs_paths:
                    run_ids: list[int] = []
                    for status in ("queued", "in_progress"):
                        for run in self.client.paginate(
                            runs_path, "workflow_runs", "list_workflow_runs", {"status": status}
                        ):
                            run_ids.append(int(run["id"]))
                    for run_id in dict.fromkeys(run_ids):
                        for _job in self.client.paginate(
                            f"/repos/{repo}/actions/runs/{run_id}/jobs", "jobs", "list_jobs_for_run"
                        ):
                            pass


class PerRunnerBaseline(Baseline):
    """Per-runner polling: GET each runner the manager knows (from its own records) every cycle."""

    name = "per_runner"
    description = "every cycle: GET /orgs/{org}/actions/runners/{id} for each runner the manager created; no conditional requests"

    def __init__(self, client: CountingClient, runners: Iterable[tuple[str, int]]) -> None:
        super().__init__(client)
        self.runners = list(runners)

    def cycle(self) -> None:
        for org, runner_id in self.runners:
            self.client.get(f"/orgs/{org}/actions/runners/{runner_id}", "get_runner")


class ListAllBaseline(Baseline):
    """List every runner of each org every cycle, all pages, without ``If-None-Match``."""

    name = "unconditional"
    description = "every cycle: list all runners of each org (every page) without conditional requests; no job poll"

    def __init__(self, client: CountingClient, orgs: Sequence[str]) -> None:
        super().__init__(client)
        self.orgs = list(orgs)

    def cycle(self) -> None:
        for org in self.orgs:
            for _runner in self.client.paginate(
                f"/orgs/{org}/actions/runners", "runners", "list_runners"
            ):
                pass
