"""Handlers for the GitHub REST operations the emulator serves.

The 44 operations of ``github-runners-api.json`` are registered under their GitHub operationIds,
plus the few neighbours a runner manager needs (``repos/get``, ``orgs/get``, webhooks and their
deliveries, ``actions/get-workflow-run``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from flask import Flask, g, request
from werkzeug.local import LocalProxy

from github_emulator import render
from github_emulator.state import (
    EmulatorError,
    Runner,
    Token,
    not_found,
    validation_failed,
)

if TYPE_CHECKING:
    from github_emulator.app import Emulator, Reply
    from github_emulator.state import EmulatorState

# kind → (path prefix, operationId namespace, "for-" suffix, "from-" suffix)
SCOPES: dict[str, tuple[str, str, str, str]] = {
    "repo": ("/repos/{owner}/{repo}", "actions/", "for-repo", "from-repo"),
    "org": ("/orgs/{org}", "actions/", "for-org", "from-org"),
    "enterprise": (
        "/enterprises/{enterprise}",
        "enterprise-admin/",
        "for-enterprise",
        "from-enterprise",
    ),
}


def register(app: Flask, emu: Emulator) -> None:
    """Add every REST route to ``app``."""
    from github_emulator.app import Reply, rest_route

    state = cast("EmulatorState", LocalProxy(lambda: emu.state))

    def token() -> Token:
        tok: Token | None = g.get("token")
        if tok is None:
            raise EmulatorError(401, "Requires authentication")
        return tok

    def scope_of(kind: str, kw: dict[str, Any]) -> str:
        if kind == "repo":
            return state.repo_for(token(), kw["owner"], kw["repo"]).full_name
        if kind == "org":
            return state.org_for(token(), kw["org"]).login
        return state.enterprise_for(token(), kw["enterprise"]).slug

    def labels_reply(runner: Runner) -> Reply:
        labels = [render.label(lb) for lb in runner.labels]
        return Reply({"total_count": len(labels), "labels": labels})

    def runner_list(runners: list[Runner]) -> Reply:
        now = time.time()
        chunk, headers = emu.paginate(runners)
        body = {
            "total_count": len(runners),
            "runners": [render.runner(state, r, now) for r in chunk],
        }
        return Reply(body, headers=headers)

    def label_names(body: dict[str, Any], allow_empty: bool) -> list[str]:
        labels = body.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise validation_failed('Invalid request.\n\n"labels" wasn\'t supplied.')
        if len(labels) > 100 or (not labels and not allow_empty):
            raise validation_failed("Validation Failed", ["labels must have 1 to 100 items"])
        return labels

    for kind, (prefix, ns, for_, from_) in SCOPES.items():
        base_path = prefix + "/actions/runners"

        def add(method: str, suffix: str, op: str, _base: str = base_path) -> Callable[..., Any]:
            return rest_route(app, method, _base + suffix, op)

        @add("GET", "", f"{ns}list-self-hosted-runners-{for_}")
        def list_runners(_kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                scope = scope_of(_kind, kw)
                return runner_list(state.runners_in(_kind, scope, request.args.get("name")))

        @add("GET", "/{runner_id}", f"{ns}get-self-hosted-runner-{for_}")
        def get_runner(runner_id: int, _kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                runner = state.runner_in(_kind, scope_of(_kind, kw), runner_id)
                return Reply(render.runner(state, runner))

        @add("DELETE", "/{runner_id}", f"{ns}delete-self-hosted-runner-{from_}")
        def delete_runner(runner_id: int, _kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                runner = state.runner_in(_kind, scope_of(_kind, kw), runner_id)
                state.delete_runner(runner)
            return Reply(None, 204)

        @add("POST", "/registration-token", f"{ns}create-registration-token-{for_}")
        def registration_token(_kind: str = kind, **kw: Any) -> Reply:
            reg = state.issue_token("registration", _kind, scope_of(_kind, kw))
            return Reply({"token": reg.token, "expires_at": render.iso(reg.expires_at)}, 201)

        @add("POST", "/remove-token", f"{ns}create-remove-token-{for_}")
        def remove_token(_kind: str = kind, **kw: Any) -> Reply:
            reg = state.issue_token("remove", _kind, scope_of(_kind, kw))
            return Reply({"token": reg.token, "expires_at": render.iso(reg.expires_at)}, 201)

        @add("POST", "/generate-jitconfig", f"actions/generate-runner-jitconfig-{for_}")
        def generate_jitconfig(_kind: str = kind, **kw: Any) -> Reply:
            scope = scope_of(_kind, kw)
            body = emu.body()
            for required in ("name", "runner_group_id", "labels"):
                if required not in body:
                    raise validation_failed(f'Invalid request.\n\n"{required}" wasn\'t supplied.')
            name, group_id = body["name"], body["runner_group_id"]
            if not isinstance(name, str) or not name.strip() or len(name) > 64:
                raise validation_failed("Validation Failed", ["name must be 1 to 64 characters"])
            if not isinstance(group_id, int) or isinstance(group_id, bool):
                raise validation_failed("Validation Failed", ["runner_group_id must be an integer"])
            labels = label_names(body, allow_empty=False)
            work_folder = body.get("work_folder", "_work")
            if not isinstance(work_folder, str):
                raise validation_failed("Validation Failed", ["work_folder must be a string"])
            with state.lock:
                runner = state.create_runner(
                    _kind, scope, name, labels, runner_group_id=group_id, ephemeral=True, jit=True
                )
                out = {
                    "runner": render.runner(state, runner),
                    "encoded_jit_config": state.jit_config(runner, emu.agent_url(), work_folder),
                }
            return Reply(out, 201)

        @add("GET", "/downloads", f"{ns}list-runner-applications-{for_}")
        def downloads(_kind: str = kind, **kw: Any) -> Reply:
            scope_of(_kind, kw)
            return Reply(
                emu.runner_apps.listing(
                    emu.base(), emu.settings.runner_version, emu.settings.tamper_checksum
                )
            )

        @add("GET", "/{runner_id}/labels", f"{ns}list-labels-for-self-hosted-runner-{for_}")
        def list_labels(runner_id: int, _kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                return labels_reply(state.runner_in(_kind, scope_of(_kind, kw), runner_id))

        @add("POST", "/{runner_id}/labels", f"{ns}add-custom-labels-to-self-hosted-runner-{for_}")
        def add_labels(runner_id: int, _kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                runner = state.runner_in(_kind, scope_of(_kind, kw), runner_id)
                state.set_custom_labels(runner, label_names(emu.body(), False), add=True)
                return labels_reply(runner)

        @add("PUT", "/{runner_id}/labels", f"{ns}set-custom-labels-for-self-hosted-runner-{for_}")
        def set_labels(runner_id: int, _kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                runner = state.runner_in(_kind, scope_of(_kind, kw), runner_id)
                names = label_names(emu.body(), True)
                if names:
                    state.set_custom_labels(runner, names, add=False)
                else:
                    state.remove_custom_labels(runner)
                return labels_reply(runner)

        @add(
            "DELETE",
            "/{runner_id}/labels",
            f"{ns}remove-all-custom-labels-from-self-hosted-runner-{for_}",
        )
        def remove_all_labels(runner_id: int, _kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                runner = state.runner_in(_kind, scope_of(_kind, kw), runner_id)
                state.remove_custom_labels(runner)
                return labels_reply(runner)

        @add(
            "DELETE",
            "/{runner_id}/labels/{name}",
            f"{ns}remove-custom-label-from-self-hosted-runner-{for_}",
        )
        def remove_label(runner_id: int, name: str, _kind: str = kind, **kw: Any) -> Reply:
            with state.lock:
                runner = state.runner_in(_kind, scope_of(_kind, kw), runner_id)
                state.remove_label(runner, name)
                return labels_reply(runner)

    # ------------------------------------------------------------------ runner groups
    @rest_route(
        app,
        "GET",
        "/orgs/{org}/actions/runner-groups",
        "actions/list-self-hosted-runner-groups-for-org",
    )
    def list_groups(org: str) -> Reply:
        with state.lock:
            login = state.org_for(token(), org).login
            groups = state.groups_of(login)
            visible = request.args.get("visible_to_repository")
            if visible:
                full = f"{login}/{visible}".lower()
                groups = [gr for gr in groups if gr.repos is None or full in gr.repos]
            chunk, headers = emu.paginate(groups)
            base = emu.base()
            body = {
                "total_count": len(groups),
                "runner_groups": [render.runner_group(base, gr) for gr in chunk],
            }
            return Reply(body, headers=headers)

    @rest_route(
        app,
        "GET",
        "/orgs/{org}/actions/runner-groups/{runner_group_id}",
        "actions/get-self-hosted-runner-group-for-org",
    )
    def get_group(org: str, runner_group_id: int) -> Reply:
        with state.lock:
            group = state.group(state.org_for(token(), org).login, runner_group_id)
            if group is None:
                raise not_found()
            return Reply(render.runner_group(emu.base(), group))

    @rest_route(
        app,
        "GET",
        "/orgs/{org}/actions/runner-groups/{runner_group_id}/runners",
        "actions/list-self-hosted-runners-in-group-for-org",
    )
    def group_runners(org: str, runner_group_id: int) -> Reply:
        with state.lock:
            login = state.org_for(token(), org).login
            if state.group(login, runner_group_id) is None:
                raise not_found()
            runners = [
                r for r in state.runners_in("org", login) if r.runner_group_id == runner_group_id
            ]
            return runner_list(runners)

    # ------------------------------------------------------------------ runs and jobs
    @rest_route(
        app, "GET", "/repos/{owner}/{repo}/actions/runs", "actions/list-workflow-runs-for-repo"
    )
    def list_runs(owner: str, repo: str) -> Reply:
        with state.lock:
            repo_obj = state.repo_for(token(), owner, repo)
            runs = [r for r in state.runs.values() if r.repo.lower() == repo_obj.full_name.lower()]
            runs.sort(key=lambda r: r.id, reverse=True)
            status = request.args.get("status")
            if status:
                runs = [r for r in runs if status in state.run_status(r)]
            for arg, attr in (("branch", "head_branch"), ("head_sha", "head_sha")):
                if request.args.get(arg):
                    runs = [r for r in runs if getattr(r, attr) == request.args[arg]]
            chunk, headers = emu.paginate(runs)
            base = emu.base()
            body = {
                "total_count": len(runs),
                "workflow_runs": [render.workflow_run(state, base, r, repo_obj) for r in chunk],
            }
            return Reply(body, headers=headers)

    @rest_route(
        app, "GET", "/repos/{owner}/{repo}/actions/runs/{run_id}", "actions/get-workflow-run"
    )
    def get_run(owner: str, repo: str, run_id: int) -> Reply:
        with state.lock:
            repo_obj = state.repo_for(token(), owner, repo)
            run = state.runs.get(run_id)
            if run is None or run.repo.lower() != repo_obj.full_name.lower():
                raise not_found()
            return Reply(render.workflow_run(state, emu.base(), run, repo_obj))

    @rest_route(
        app,
        "POST",
        "/repos/{owner}/{repo}/actions/runs/{run_id}/cancel",
        "actions/cancel-workflow-run",
    )
    def cancel_run(owner: str, repo: str, run_id: int) -> Reply:
        with state.lock:
            repo_obj = state.repo_for(token(), owner, repo)
            run = state.runs.get(run_id)
            if run is None or run.repo.lower() != repo_obj.full_name.lower():
                raise not_found()
            if state.run_status(run)[0] == "completed":
                raise EmulatorError(409, "Cannot cancel a workflow run that is completed.")
            for job_id in run.job_ids:
                state.cancel_job(state.jobs[job_id])
        return Reply({}, 202)

    @rest_route(
        app,
        "GET",
        "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
        "actions/list-jobs-for-workflow-run",
    )
    def list_jobs(owner: str, repo: str, run_id: int) -> Reply:
        with state.lock:
            repo_obj = state.repo_for(token(), owner, repo)
            run = state.runs.get(run_id)
            if run is None or run.repo.lower() != repo_obj.full_name.lower():
                raise not_found()
            jobs = [state.jobs[j] for j in run.job_ids if j in state.jobs]
            chunk, headers = emu.paginate(jobs)
            base = emu.base()
            return Reply(
                {"total_count": len(jobs), "jobs": [render.job(base, j) for j in chunk]},
                headers=headers,
            )

    @rest_route(
        app,
        "GET",
        "/repos/{owner}/{repo}/actions/jobs/{job_id}",
        "actions/get-job-for-workflow-run",
    )
    def get_job(owner: str, repo: str, job_id: int) -> Reply:
        with state.lock:
            repo_obj = state.repo_for(token(), owner, repo)
            job = state.jobs.get(job_id)
            if job is None or job.repo.lower() != repo_obj.full_name.lower():
                raise not_found()
            return Reply(render.job(emu.base(), job))

    # ------------------------------------------------------------------ orgs, repos, users
    @rest_route(app, "GET", "/orgs/{org}/repos", "repos/list-for-org")
    def list_org_repos(org: str) -> Reply:
        with state.lock:
            repos = state.repos_of_org(token(), org)
            kind = request.args.get("type", "all")
            if kind == "public":
                repos = [r for r in repos if not r.private]
            elif kind == "private":
                repos = [r for r in repos if r.private]
            elif kind == "forks":
                repos = []
            sort = request.args.get("sort", "created")
            direction = request.args.get("direction") or ("asc" if sort == "full_name" else "desc")
            if sort == "full_name":
                repos.sort(key=lambda r: r.full_name.lower(), reverse=direction == "desc")
            else:
                repos.sort(key=lambda r: r.id, reverse=direction == "desc")
            chunk, headers = emu.paginate(repos)
            base = emu.base()
            return Reply([render.repository(state, base, r) for r in chunk], headers=headers)

    @rest_route(app, "GET", "/repos/{owner}/{repo}", "repos/get")
    def get_repo(owner: str, repo: str) -> Reply:
        with state.lock:
            return Reply(render.repository(state, emu.base(), state.repo_for(token(), owner, repo)))

    @rest_route(app, "GET", "/orgs/{org}", "orgs/get")
    def get_org(org: str) -> Reply:
        token()
        with state.lock:
            found = state.orgs.get(org.lower())
            if found is None:
                raise not_found()
            return Reply(
                render.organization_full(emu.base(), found.login, found.id, found.created_at)
            )

    @rest_route(app, "GET", "/user", "users/get-authenticated")
    def get_user() -> Reply:
        tok = token()
        return Reply(render.user(emu.base(), f"emulator-user-{tok.index}", 1000 + tok.index))

    @rest_route(app, "GET", "/rate_limit", "rate-limit/get")
    def rate_limit() -> Reply:
        tok: Token | None = g.get("token")
        if tok is None:
            core = {"limit": 60, "remaining": 60, "reset": int(time.time()) + 3600, "used": 0}
        else:
            budget = emu.limiter.peek(tok.key)
            core = {
                "limit": budget.limit,
                "remaining": budget.remaining,
                "reset": budget.reset,
                "used": budget.used,
            }
        reset = core["reset"]

        def other(limit: int) -> dict[str, int]:
            return {"limit": limit, "remaining": limit, "reset": reset, "used": 0}

        resources = {
            "core": core,
            "search": other(30),
            "graphql": other(5000),
            "integration_manifest": other(5000),
            "actions_runner_registration": other(10000),
            "code_search": other(10),
        }
        return Reply({"resources": resources, "rate": core})

    # ------------------------------------------------------------------ webhooks
    for hkind, hprefix, hns in (
        ("org", "/orgs/{org}", "orgs/"),
        ("repo", "/repos/{owner}/{repo}", "repos/"),
    ):

        def hook_scope(_kind: str, kw: dict[str, Any]) -> str:
            if _kind == "org":
                return state.org_for(token(), kw["org"]).login
            return state.repo_for(token(), kw["owner"], kw["repo"]).full_name

        def hadd(method: str, suffix: str, op: str, _prefix: str = hprefix) -> Callable[..., Any]:
            return rest_route(app, method, _prefix + "/hooks" + suffix, op)

        @hadd("GET", "", f"{hns}list-webhooks")
        def list_hooks(_kind: str = hkind, **kw: Any) -> Reply:
            with state.lock:
                scope = hook_scope(_kind, kw)
                hooks = [
                    h
                    for h in sorted(state.hooks.values(), key=lambda h: h.id)
                    if h.scope_kind == _kind and h.scope.lower() == scope.lower()
                ]
                chunk, headers = emu.paginate(hooks)
                return Reply([render.hook(emu.base(), h) for h in chunk], headers=headers)

        @hadd("POST", "", f"{hns}create-webhook")
        def create_hook(_kind: str = hkind, **kw: Any) -> Reply:
            scope = hook_scope(_kind, kw)
            body = emu.body()
            config = body.get("config")
            if not isinstance(config, dict) or not isinstance(config.get("url"), str):
                raise validation_failed("Validation Failed", ["config.url is required"])
            hook = state.add_hook(
                config["url"],
                config.get("secret"),
                org=scope if _kind == "org" else None,
                repo=scope if _kind == "repo" else None,
                events=body.get("events") or ["push"],
            )
            hook.active = bool(body.get("active", True))
            return Reply(render.hook(emu.base(), hook), 201)

        @hadd("GET", "/{hook_id}", f"{hns}get-webhook")
        def get_hook(hook_id: int, _kind: str = hkind, **kw: Any) -> Reply:
            with state.lock:
                hook = state.hook_in(_kind, hook_scope(_kind, kw), hook_id)
                return Reply(render.hook(emu.base(), hook))

        @hadd("DELETE", "/{hook_id}", f"{hns}delete-webhook")
        def delete_hook(hook_id: int, _kind: str = hkind, **kw: Any) -> Reply:
            with state.lock:
                state.delete_hook(state.hook_in(_kind, hook_scope(_kind, kw), hook_id))
            return Reply(None, 204)

        @hadd("GET", "/{hook_id}/deliveries", f"{hns}list-webhook-deliveries")
        def list_deliveries(hook_id: int, _kind: str = hkind, **kw: Any) -> Reply:
            with state.lock:
                hook = state.hook_in(_kind, hook_scope(_kind, kw), hook_id)
                deliveries = state.deliveries_of(hook)
            status = request.args.get("status")
            if status == "success":
                deliveries = [d for d in deliveries if 200 <= d.status_code < 300]
            elif status == "failure":
                deliveries = [d for d in deliveries if d.done and not 200 <= d.status_code < 300]
            cursor = request.args.get("cursor", "")
            if cursor.startswith("v1_") and cursor[3:].isdigit():
                deliveries = [d for d in deliveries if d.id < int(cursor[3:])]
            per_page = request.args.get("per_page", "30")
            size = min(100, max(1, int(per_page))) if per_page.isdigit() else 30
            chunk = deliveries[:size]
            headers = {}
            if len(deliveries) > size:
                args = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
                args.append(("cursor", f"v1_{chunk[-1].id}"))
                headers["Link"] = f'<{request.base_url}?{urlencode(args)}>; rel="next"'
            return Reply([render.delivery_item(d) for d in chunk], headers=headers)

        @hadd("GET", "/{hook_id}/deliveries/{delivery_id}", f"{hns}get-webhook-delivery")
        def get_delivery(hook_id: int, delivery_id: int, _kind: str = hkind, **kw: Any) -> Reply:
            with state.lock:
                hook = state.hook_in(_kind, hook_scope(_kind, kw), hook_id)
                delivery = state.deliveries.get(delivery_id)
                if delivery is None or delivery.hook_id != hook.id:
                    raise not_found()
                return Reply(render.delivery_full(delivery))

        @hadd(
            "POST",
            "/{hook_id}/deliveries/{delivery_id}/attempts",
            f"{hns}redeliver-webhook-delivery",
        )
        def redeliver(hook_id: int, delivery_id: int, _kind: str = hkind, **kw: Any) -> Reply:
            with state.lock:
                hook = state.hook_in(_kind, hook_scope(_kind, kw), hook_id)
                original = state.deliveries.get(delivery_id)
                if original is None or original.hook_id != hook.id:
                    raise not_found()
            state.new_delivery(
                hook,
                original.event,
                original.action,
                original.body,
                original.repository_id,
                redelivery=True,
                guid=original.guid,
            )
            return Reply({}, 202)
