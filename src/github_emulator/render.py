"""GitHub-shaped JSON for the emulator's objects.

Every function takes the base URL the client used, so ``url``/``html_url`` fields point back at
the emulator whatever address it was reached on. Shapes follow GitHub's OpenAPI description
(REST) and the octokit/webhooks schemas (webhook payloads, which forbid extra keys).
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from typing import TYPE_CHECKING, Any

from github_emulator.state import (
    DEFAULT_GROUP_ID,
    Delivery,
    Hook,
    Job,
    Repo,
    Run,
    Runner,
    RunnerGroup,
)

if TYPE_CHECKING:
    from github_emulator.state import EmulatorState

BOT_LOGIN = "emulator-bot"
BOT_ID = 41898282


def iso(ts: float | None) -> str | None:
    """Epoch seconds → GitHub's ``2011-01-26T19:01:12Z``."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def node_id(kind: str, ident: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{ident}".encode()).decode().rstrip("=")


def user(base: str, login: str, ident: int, kind: str = "User") -> dict[str, Any]:
    """GitHub's "simple user" (also used for organisation owners)."""
    u = f"{base}/users/{login}"
    return {
        "login": login,
        "id": ident,
        "node_id": node_id(kind, ident),
        "avatar_url": f"{base}/avatars/u/{ident}?v=4",
        "gravatar_id": "",
        "url": u,
        "html_url": f"{base}/{login}",
        "followers_url": f"{u}/followers",
        "following_url": f"{u}/following{{/other_user}}",
        "gists_url": f"{u}/gists{{/gist_id}}",
        "starred_url": f"{u}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{u}/subscriptions",
        "organizations_url": f"{u}/orgs",
        "repos_url": f"{u}/repos",
        "events_url": f"{u}/events{{/privacy}}",
        "received_events_url": f"{u}/received_events",
        "type": kind,
        "site_admin": False,
    }


def owner_of(state: EmulatorState, base: str, repo: Repo) -> dict[str, Any]:
    org = state.orgs.get(repo.owner.lower())
    if org is not None:
        return user(base, org.login, org.id, "Organization")
    return user(
        base, repo.owner, 10_000_000 + zlib.crc32(repo.owner.lower().encode()) % 1_000_000, "User"
    )


def organization(base: str, login: str, ident: int) -> dict[str, Any]:
    """The webhook ``organization`` object (exact key set)."""
    u = f"{base}/orgs/{login}"
    return {
        "login": login,
        "id": ident,
        "node_id": node_id("Organization", ident),
        "url": u,
        "repos_url": f"{u}/repos",
        "events_url": f"{u}/events",
        "hooks_url": f"{u}/hooks",
        "issues_url": f"{u}/issues",
        "members_url": f"{u}/members{{/member}}",
        "public_members_url": f"{u}/public_members{{/member}}",
        "avatar_url": f"{base}/avatars/u/{ident}?v=4",
        "description": "",
    }


def organization_full(base: str, login: str, ident: int, created_at: float) -> dict[str, Any]:
    """``GET /orgs/{org}``."""
    out = organization(base, login, ident)
    out.update(
        {
            "name": login,
            "company": None,
            "blog": "",
            "location": None,
            "email": None,
            "twitter_username": None,
            "is_verified": False,
            "has_organization_projects": True,
            "has_repository_projects": True,
            "public_repos": 0,
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "html_url": f"{base}/{login}",
            "created_at": iso(created_at),
            "updated_at": iso(created_at),
            "archived_at": None,
            "type": "Organization",
        }
    )
    return out


def repository(
    state: EmulatorState, base: str, repo: Repo, webhook: bool = False
) -> dict[str, Any]:
    """A repository: the REST "full"/"minimal" shape, or the webhook shape (``webhook=True``)."""
    full = repo.full_name
    u = f"{base}/repos/{full}"
    html = f"{base}/{full}"
    out: dict[str, Any] = {
        "id": repo.id,
        "node_id": node_id("Repository", repo.id),
        "name": repo.name,
        "full_name": full,
        "private": repo.private,
        "owner": owner_of(state, base, repo),
        "html_url": html,
        "description": None,
        "fork": False,
        "url": u,
        "forks_url": f"{u}/forks",
        "keys_url": f"{u}/keys{{/key_id}}",
        "collaborators_url": f"{u}/collaborators{{/collaborator}}",
        "teams_url": f"{u}/teams",
        "hooks_url": f"{u}/hooks",
        "issue_events_url": f"{u}/issues/events{{/number}}",
        "events_url": f"{u}/events",
        "assignees_url": f"{u}/assignees{{/user}}",
        "branches_url": f"{u}/branches{{/branch}}",
        "tags_url": f"{u}/tags",
        "blobs_url": f"{u}/git/blobs{{/sha}}",
        "git_tags_url": f"{u}/git/tags{{/sha}}",
        "git_refs_url": f"{u}/git/refs{{/sha}}",
        "trees_url": f"{u}/git/trees{{/sha}}",
        "statuses_url": f"{u}/statuses/{{sha}}",
        "languages_url": f"{u}/languages",
        "stargazers_url": f"{u}/stargazers",
        "contributors_url": f"{u}/contributors",
        "subscribers_url": f"{u}/subscribers",
        "subscription_url": f"{u}/subscription",
        "commits_url": f"{u}/commits{{/sha}}",
        "git_commits_url": f"{u}/git/commits{{/sha}}",
        "comments_url": f"{u}/comments{{/number}}",
        "issue_comment_url": f"{u}/issues/comments{{/number}}",
        "contents_url": f"{u}/contents/{{+path}}",
        "compare_url": f"{u}/compare/{{base}}...{{head}}",
        "merges_url": f"{u}/merges",
        "archive_url": f"{u}/{{archive_format}}{{/ref}}",
        "downloads_url": f"{u}/downloads",
        "issues_url": f"{u}/issues{{/number}}",
        "pulls_url": f"{u}/pulls{{/number}}",
        "milestones_url": f"{u}/milestones{{/number}}",
        "notifications_url": f"{u}/notifications{{?since,all,participating}}",
        "labels_url": f"{u}/labels{{/name}}",
        "releases_url": f"{u}/releases{{/id}}",
        "deployments_url": f"{u}/deployments",
        "created_at": iso(repo.created_at),
        "updated_at": iso(repo.created_at),
        "pushed_at": iso(repo.created_at),
        "git_url": f"{base.replace('http', 'git', 1)}/{full}.git",
        "ssh_url": f"git@emulator:{full}.git",
        "clone_url": f"{html}.git",
        "svn_url": html,
        "homepage": None,
        "size": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": None,
        "has_issues": True,
        "has_projects": True,
        "has_downloads": True,
        "has_wiki": True,
        "has_pages": False,
        "forks_count": 0,
        "mirror_url": None,
        "archived": False,
        "disabled": False,
        "open_issues_count": 0,
        "license": None,
        "forks": 0,
        "open_issues": 0,
        "watchers": 0,
        "default_branch": "main",
        "is_template": False,
        "topics": [],
        "visibility": "private" if repo.private else "public",
        "web_commit_signoff_required": False,
    }
    if webhook:
        out["custom_properties"] = {}
    else:
        out["permissions"] = {
            "admin": True,
            "maintain": True,
            "push": True,
            "triage": True,
            "pull": True,
        }
        out["allow_forking"] = False
    return out


def label(lb: Any) -> dict[str, Any]:
    return {"id": lb.id, "name": lb.name, "type": lb.type}


def runner(state: EmulatorState, r: Runner, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "id": r.id,
        "name": r.name,
        "os": r.os,
        "status": "online" if state.is_online(r, now) else "offline",
        "busy": state.reported_busy(r, now),
        "ephemeral": r.ephemeral,
        "runner_group_id": r.runner_group_id,
        "version": r.version,
        "labels": [label(lb) for lb in r.labels],
    }


def runner_group(base: str, g: RunnerGroup) -> dict[str, Any]:
    u = f"{base}/orgs/{g.org}/actions/runner-groups/{g.id}"
    out: dict[str, Any] = {
        "id": g.id,
        "name": g.name,
        "visibility": "all" if g.repos is None else "selected",
        "default": g.default,
        "runners_url": f"{u}/runners",
        "inherited": False,
        "allows_public_repositories": g.id == DEFAULT_GROUP_ID,
        "restricted_to_workflows": False,
        "selected_workflows": [],
        "workflow_restrictions_read_only": False,
    }
    if g.repos is not None:
        out["selected_repositories_url"] = f"{u}/repositories"
    return out


def _rest_step(step: Any) -> dict[str, Any]:
    return {
        "name": step.name,
        "status": step.status,
        "conclusion": step.conclusion,
        "number": step.number,
        "started_at": iso(step.started_at),
        "completed_at": iso(step.completed_at),
    }


def job(base: str, j: Job) -> dict[str, Any]:
    """A workflow job as the REST API shows it."""
    u = f"{base}/repos/{j.repo}"
    return {
        "id": j.id,
        "run_id": j.run_id,
        "run_url": f"{u}/actions/runs/{j.run_id}",
        "run_attempt": j.run_attempt,
        "node_id": node_id("CheckRun", j.id),
        "head_sha": j.head_sha,
        "head_branch": j.head_branch,
        "url": f"{u}/actions/jobs/{j.id}",
        "html_url": f"{base}/{j.repo}/actions/runs/{j.run_id}/job/{j.id}",
        "status": j.status,
        "conclusion": j.conclusion,
        "created_at": iso(j.queued_at),
        "started_at": iso(j.started_at or j.queued_at),
        "completed_at": iso(j.completed_at),
        "name": j.name,
        "steps": [_rest_step(s) for s in j.steps],
        "check_run_url": f"{u}/check-runs/{j.id}",
        "labels": list(j.labels),
        "runner_id": j.runner_id,
        "runner_name": j.runner_name,
        "runner_group_id": j.runner_group_id,
        "runner_group_name": j.runner_group_name,
        "workflow_name": j.workflow_name,
    }


def workflow_run(state: EmulatorState, base: str, run: Run, repo: Repo) -> dict[str, Any]:
    status, conclusion = state.run_status(run)
    u = f"{base}/repos/{repo.full_name}/actions/runs/{run.id}"
    repo_obj = repository(state, base, repo)
    return {
        "id": run.id,
        "name": run.name,
        "node_id": node_id("WorkflowRun", run.id),
        "check_suite_id": run.id,
        "check_suite_node_id": node_id("CheckSuite", run.id),
        "head_branch": run.head_branch,
        "head_sha": run.head_sha,
        "path": ".github/workflows/ci.yaml",
        "display_title": run.name,
        "run_number": run.run_number,
        "event": "push",
        "status": status,
        "conclusion": conclusion,
        "workflow_id": 1,
        "url": u,
        "html_url": f"{base}/{repo.full_name}/actions/runs/{run.id}",
        "pull_requests": [],
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at or run.created_at),
        "run_attempt": 1,
        "run_started_at": iso(run.created_at),
        "jobs_url": f"{u}/jobs",
        "logs_url": f"{u}/logs",
        "check_suite_url": f"{base}/repos/{repo.full_name}/check-suites/{run.id}",
        "artifacts_url": f"{u}/artifacts",
        "cancel_url": f"{u}/cancel",
        "rerun_url": f"{u}/rerun",
        "workflow_url": f"{base}/repos/{repo.full_name}/actions/workflows/1",
        "head_commit": {
            "id": run.head_sha,
            "tree_id": run.head_sha[::-1],
            "message": run.name,
            "timestamp": iso(run.created_at),
            "author": {"name": "Emulator", "email": "emulator@example.invalid"},
            "committer": {"name": "Emulator", "email": "emulator@example.invalid"},
        },
        "repository": repo_obj,
        "head_repository": repo_obj,
    }


def _webhook_step(step: Any) -> dict[str, Any]:
    """Steps in webhook payloads must match one of the octokit step variants exactly."""
    if step.status == "completed":
        return {
            "name": step.name,
            "status": "completed",
            "conclusion": step.conclusion,
            "number": step.number,
            "started_at": iso(step.started_at or step.completed_at),
            "completed_at": iso(step.completed_at),
        }
    if step.status == "in_progress":
        return {
            "name": step.name,
            "status": "in_progress",
            "conclusion": None,
            "number": step.number,
            "started_at": iso(step.started_at),
            "completed_at": None,
        }
    return {
        "name": step.name,
        "status": "queued",
        "conclusion": None,
        "number": step.number,
        "started_at": None,
        "completed_at": None,
    }


def workflow_job_payload(state: EmulatorState, j: Job, action: str, base: str) -> dict[str, Any]:
    """The ``workflow_job`` webhook body for ``action`` (queued/waiting/in_progress/completed)."""
    u = f"{base}/repos/{j.repo}"
    repo = state.repos[j.repo.lower()]
    status = {"queued": "queued", "waiting": "waiting", "in_progress": "in_progress"}.get(
        action, "completed"
    )
    with_runner = status in ("in_progress", "completed") and j.runner_id is not None
    wj = {
        "id": j.id,
        "run_id": j.run_id,
        "run_url": f"{u}/actions/runs/{j.run_id}",
        "run_attempt": j.run_attempt,
        "node_id": node_id("CheckRun", j.id),
        "head_sha": j.head_sha,
        "url": f"{u}/actions/jobs/{j.id}",
        "html_url": f"{base}/{j.repo}/actions/runs/{j.run_id}/job/{j.id}",
        "status": status,
        "conclusion": j.conclusion if status == "completed" else None,
        "started_at": iso(j.started_at or j.queued_at),
        "completed_at": iso(j.completed_at) if status == "completed" else None,
        "created_at": iso(j.queued_at),
        "name": j.name,
        "steps": [] if status in ("queued", "waiting") else [_webhook_step(s) for s in j.steps],
        "check_run_url": f"{u}/check-runs/{j.id}",
        "labels": list(j.labels),
        "runner_id": j.runner_id if with_runner else None,
        "runner_name": j.runner_name if with_runner else None,
        "runner_group_id": j.runner_group_id if with_runner else None,
        "runner_group_name": j.runner_group_name if with_runner else None,
        "workflow_name": j.workflow_name,
        "head_branch": j.head_branch,
    }
    payload: dict[str, Any] = {"action": action, "workflow_job": wj}
    payload["repository"] = repository(state, base, repo, webhook=True)
    org = state.orgs.get(repo.owner.lower())
    if org is not None:
        payload["organization"] = organization(base, org.login, org.id)
    payload["sender"] = user(base, BOT_LOGIN, BOT_ID, "Bot")
    return payload


def hook(base: str, h: Hook) -> dict[str, Any]:
    prefix = f"{base}/orgs/{h.scope}" if h.scope_kind == "org" else f"{base}/repos/{h.scope}"
    u = f"{prefix}/hooks/{h.id}"
    out: dict[str, Any] = {
        "type": "Organization" if h.scope_kind == "org" else "Repository",
        "id": h.id,
        "name": "web",
        "active": h.active,
        "events": list(h.events),
        "config": {
            "url": h.url,
            "content_type": "json",
            "insecure_ssl": "0",
            **({"secret": "********"} if h.secret else {}),
        },
        "updated_at": iso(h.updated_at),
        "created_at": iso(h.created_at),
        "url": u,
        "ping_url": f"{u}/pings",
        "deliveries_url": f"{u}/deliveries",
    }
    if h.scope_kind == "repo":
        out["test_url"] = f"{u}/test"
        out["last_response"] = {"code": None, "status": "unused", "message": None}
    return out


def delivery_item(d: Delivery) -> dict[str, Any]:
    """An entry of ``GET …/hooks/{id}/deliveries``."""
    return {
        "id": d.id,
        "guid": d.guid,
        "delivered_at": iso(d.delivered_at or d.created_at),
        "redelivery": d.redelivery,
        "duration": round(d.duration, 3),
        "status": d.status,
        "status_code": d.status_code,
        "event": d.event,
        "action": d.action,
        "installation_id": None,
        "repository_id": d.repository_id,
        "throttled_at": None,
    }


def delivery_full(d: Delivery) -> dict[str, Any]:
    """``GET …/hooks/{id}/deliveries/{delivery_id}``: the item plus request and response."""
    out = delivery_item(d)
    try:
        payload: Any = json.loads(d.body)
    except ValueError:
        payload = None
    out["url"] = d.url
    out["request"] = {"headers": dict(d.request_headers), "payload": payload}
    out["response"] = {"headers": dict(d.response_headers), "payload": d.response_body}
    return out
