"""The control API under ``/_emulator/`` (no auth): set up the world, queue jobs, inspect, break.

Documented in docs/emulator.md. Tokens are never echoed back, only their ``token_key``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

from flask import Flask, Response, request
from werkzeug.local import LocalProxy

from github_emulator import render
from github_emulator.state import EmulatorError, Runner, validation_failed

if TYPE_CHECKING:
    from github_emulator.app import Emulator
    from github_emulator.state import EmulatorState

PREFIX = "/_emulator"


def _json(body: Any, status: int = 200) -> Response:
    from github_emulator.app import _json_response

    return _json_response(body, status)


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
        raise validation_failed(f"{name!r} must be a list of strings")
    return list(value)


def register(app: Flask, emu: Emulator) -> None:
    state = cast("EmulatorState", LocalProxy(lambda: emu.state))

    @app.before_request
    def _count_control() -> None:
        if request.path.startswith(PREFIX + "/"):
            emu.stats.bump("control_requests")

    def body() -> dict[str, Any]:
        if not request.get_data():
            return {}
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise EmulatorError(400, "the body must be a JSON object")
        return data

    def required(data: dict[str, Any], name: str) -> Any:
        value = data.get(name)
        if value in (None, ""):
            raise validation_failed(f"{name!r} is required")
        return value

    def runner_view(r: Runner) -> dict[str, Any]:
        out = render.runner(state, r)
        out.update(
            {
                "scope": f"{r.scope_kind}:{r.scope}",
                "jit": r.jit,
                "simulated": r.simulated,
                "job_id": r.job_id,
                "connected_at": r.connected_at,
                "last_seen": r.last_seen,
                "created_at": r.created_at,
                "really_busy": r.job_id is not None,
            }
        )
        return out

    @app.get(f"{PREFIX}/health")
    def health() -> Response:
        return _json({"ok": True, "base_url": state.base_url})

    # ------------------------------------------------------------------ world
    @app.get(f"{PREFIX}/orgs")
    def list_orgs() -> Response:
        with state.lock:
            return _json([{"login": o.login, "id": o.id} for o in state.orgs.values()])

    @app.post(f"{PREFIX}/orgs")
    def add_org() -> Response:
        org = state.add_org(str(required(body(), "login")))
        return _json({"login": org.login, "id": org.id}, 201)

    @app.get(f"{PREFIX}/repos")
    def list_repos() -> Response:
        with state.lock:
            return _json([{"full_name": r.full_name, "id": r.id} for r in state.repos.values()])

    @app.post(f"{PREFIX}/repos")
    def add_repo() -> Response:
        data = body()
        owner, name = str(required(data, "owner")), str(required(data, "name"))
        repo = state.add_repo(owner, name, private=bool(data.get("private", True)))
        return _json({"full_name": repo.full_name, "id": repo.id}, 201)

    @app.post(f"{PREFIX}/enterprises")
    def add_enterprise() -> Response:
        data = body()
        ent = state.add_enterprise(str(data.get("slug") or required(data, "name")))
        return _json({"slug": ent.slug, "id": ent.id}, 201)

    @app.get(f"{PREFIX}/tokens")
    def list_tokens() -> Response:
        with state.lock:
            return _json(
                [
                    {
                        "key": t.key,
                        "index": t.index,
                        "orgs": sorted(t.orgs),
                        "repos": sorted(t.repos),
                        "enterprises": sorted(t.enterprises),
                        "rate_limit": emu.limiter.peek(t.key).__dict__,
                    }
                    for t in state.tokens.values()
                ]
            )

    @app.post(f"{PREFIX}/tokens")
    def add_token() -> Response:
        data = body()
        token = state.add_token(
            str(required(data, "token")),
            _str_list(data.get("orgs"), "orgs"),
            _str_list(data.get("repos"), "repos"),
            _str_list(data.get("enterprises"), "enterprises"),
        )
        return _json({"key": token.key, "index": token.index}, 201)

    @app.get(f"{PREFIX}/runner-groups")
    def list_groups() -> Response:
        with state.lock:
            return _json(
                [
                    {"org": g.org, "id": g.id, "name": g.name, "repos": g.repos}
                    for g in state.groups.values()
                ]
            )

    @app.post(f"{PREFIX}/runner-groups")
    def add_group() -> Response:
        data = body()
        repos = data.get("repos")
        group = state.add_runner_group(
            str(required(data, "org")),
            str(required(data, "name")),
            None if repos is None else _str_list(repos, "repos"),
        )
        return _json(
            {"id": group.id, "org": group.org, "name": group.name, "repos": group.repos}, 201
        )

    @app.get(f"{PREFIX}/hooks")
    def list_hooks() -> Response:
        with state.lock:
            return _json(
                [
                    {
                        "id": h.id,
                        "scope": f"{h.scope_kind}:{h.scope}",
                        "url": h.url,
                        "events": h.events,
                        "active": h.active,
                    }
                    for h in state.hooks.values()
                ]
            )

    @app.post(f"{PREFIX}/hooks")
    def add_hook() -> Response:
        data = body()
        hook = state.add_hook(
            str(required(data, "url")),
            data.get("secret"),
            org=data.get("org"),
            repo=data.get("repo"),
            events=_str_list(data.get("events"), "events") or ["workflow_job"],
        )
        return _json({"id": hook.id, "scope": f"{hook.scope_kind}:{hook.scope}"}, 201)

    @app.get(f"{PREFIX}/deliveries")
    def list_deliveries() -> Response:
        hook_id = request.args.get("hook_id", type=int)
        with state.lock:
            deliveries = sorted(state.deliveries.values(), key=lambda d: d.id)
            out = []
            for d in deliveries:
                if hook_id is not None and d.hook_id != hook_id:
                    continue
                item = render.delivery_item(d)
                item["hook_id"] = d.hook_id
                item["payload"] = json.loads(d.body)
                out.append(item)
        return _json(out)

    @app.post(f"{PREFIX}/deliveries/wait")
    def wait_deliveries() -> Response:
        timeout = float(body().get("timeout", 30))
        return _json({"idle": emu.dispatcher.wait_idle(min(timeout, 120))})

    # ------------------------------------------------------------------ runners
    @app.get(f"{PREFIX}/runners")
    def list_runners() -> Response:
        with state.lock:
            return _json(
                [runner_view(r) for r in sorted(state.runners.values(), key=lambda r: r.id)]
            )

    @app.post(f"{PREFIX}/runners")
    def add_runners() -> Response:
        """Bulk-create runners without processes; ``online`` ones are simulated and run jobs."""
        data = body()
        scopes = [(k, data[k]) for k in ("org", "repo", "enterprise") if data.get(k)]
        if len(scopes) != 1:
            raise validation_failed("give exactly one of 'org', 'repo' or 'enterprise'")
        kind, scope = scopes[0]
        count = int(data.get("count", 1))
        if not 1 <= count <= 10_000:
            raise validation_failed("'count' must be within 1..10000")
        prefix = str(data.get("name_prefix") or "sim")
        labels = _str_list(data.get("labels"), "labels") or ["self-hosted", "linux", "x64"]
        online = bool(data.get("online", False))
        created = []
        with state.lock:
            if kind == "org" and scope.lower() not in state.orgs:
                raise validation_failed(f"unknown org {scope!r}")
            if kind == "repo" and scope.lower() not in state.repos:
                raise validation_failed(f"unknown repo {scope!r}")
            if kind == "enterprise" and scope.lower() not in state.enterprises:
                raise validation_failed(f"unknown enterprise {scope!r}")
            start = len(state.runners)
            for i in range(count):
                runner = state.create_runner(
                    kind,
                    scope,
                    f"{prefix}-{start + i + 1}",
                    labels,
                    runner_group_id=int(data.get("runner_group_id", 1)),
                    ephemeral=bool(data.get("ephemeral", True)),
                    jit=bool(data.get("jit", False)) and not online,
                    simulated=online,
                )
                created.append(runner.id)
        return _json({"ids": created}, 201)

    # ------------------------------------------------------------------ jobs
    @app.post(f"{PREFIX}/jobs")
    def queue_job() -> Response:
        data = body()
        steps = data.get("steps") or []
        if not isinstance(steps, list):
            raise validation_failed("'steps' must be a list")
        job = state.queue_job(
            str(required(data, "repo")),
            _str_list(data.get("labels") or ["self-hosted"], "labels"),
            steps,
            runner_group=data.get("runner_group"),
            name=str(data.get("name") or "build"),
            workflow_name=str(data.get("workflow_name") or "CI"),
            waiting=bool(data.get("waiting", False)),
            duration=float(data.get("duration", 0.0)),
            conclusion=str(data.get("conclusion") or "success"),
            head_branch=str(data.get("head_branch") or "main"),
        )
        return _json({"id": job.id, "run_id": job.run_id, "status": job.status}, 201)

    @app.get(f"{PREFIX}/jobs")
    def list_jobs() -> Response:
        status = request.args.get("status")
        with state.lock:
            return _json(
                [
                    j.as_dict()
                    for j in sorted(state.jobs.values(), key=lambda j: j.id)
                    if status is None or j.status == status
                ]
            )

    @app.get(f"{PREFIX}/jobs/<int:job_id>")
    def get_job(job_id: int) -> Response:
        with state.lock:
            return _json(state.job(job_id).as_dict())

    @app.post(f"{PREFIX}/jobs/<int:job_id>/approve")
    def approve_job(job_id: int) -> Response:
        with state.lock:
            job = state.job(job_id)
            state.approve_job(job)
            return _json(job.as_dict())

    @app.post(f"{PREFIX}/jobs/<int:job_id>/cancel")
    def cancel_job(job_id: int) -> Response:
        with state.lock:
            job = state.job(job_id)
            state.cancel_job(job)
            return _json(job.as_dict())

    # ------------------------------------------------------------------ stats, faults, settings
    @app.get(f"{PREFIX}/stats")
    def stats() -> Response:
        out = emu.stats.snapshot()
        units = dict(emu.limiter.units)
        out["rate_limit_units"] = units
        out["rate_limit_units_total"] = sum(units.values())
        out["webhook_deliveries"] = emu.dispatcher.sent + emu.dispatcher.failed
        out["webhook_deliveries_ok"] = emu.dispatcher.sent
        out["webhook_deliveries_failed"] = emu.dispatcher.failed
        out["faults_injected"] = emu.faults.injected
        now = time.time()
        with state.lock:
            runners = list(state.runners.values())
            out["runners"] = {
                "total": len(runners),
                "online": sum(state.is_online(r, now) for r in runners),
                "busy": sum(r.job_id is not None for r in runners),
            }
            out["jobs"] = dict(Counter(j.status for j in state.jobs.values()))
        return _json(out)

    @app.delete(f"{PREFIX}/stats")
    def reset_stats() -> Response:
        emu.stats.reset()
        emu.limiter.units.clear()
        return _json(None, 204)

    @app.get(f"{PREFIX}/faults")
    def list_faults() -> Response:
        return _json(emu.faults.list())

    @app.post(f"{PREFIX}/faults")
    def add_fault() -> Response:
        return _json(emu.faults.add(body()).as_dict(), 201)

    @app.delete(f"{PREFIX}/faults")
    def clear_faults() -> Response:
        emu.faults.clear()
        return _json(None, 204)

    @app.post(f"{PREFIX}/reset")
    def reset() -> Response:
        emu.reset(full=bool(body().get("full", False)))
        return _json({"reset": True})

    @app.get(f"{PREFIX}/settings")
    def get_settings() -> Response:
        return _json(emu.settings.as_dict())

    @app.post(f"{PREFIX}/settings")
    def set_settings() -> Response:
        unknown = emu.settings.update(body())
        if unknown:
            raise validation_failed(f"unknown settings: {', '.join(sorted(unknown))}")
        return _json(emu.settings.as_dict())

    @app.get(f"{PREFIX}/runner-app")
    def runner_app_info() -> Response:
        version = emu.settings.runner_version
        return _json(
            {
                "version": version,
                "tamper_checksum": emu.settings.tamper_checksum,
                "files": emu.runner_apps.listing(emu.base(), version, False),
            }
        )

    @app.post(f"{PREFIX}/runner-app")
    def runner_app_set() -> Response:
        data = body()
        if data.get("version"):
            version = str(data["version"])
            try:
                emu.runner_apps.archive("linux", "x64", version)
            except ValueError as exc:
                raise validation_failed(str(exc)) from None
            emu.settings.runner_version = version
        if "tamper_checksum" in data:
            emu.settings.tamper_checksum = bool(data["tamper_checksum"])
        return runner_app_info()

    @app.get(f"{PREFIX}/runner-app/<name>")
    def runner_app_file(name: str) -> Response:
        data = emu.runner_apps.by_filename(name)
        if data is None:
            raise EmulatorError(404, "Not Found")
        fault = emu.faults.match("GET", request.path, None)
        if fault is not None:
            early = emu.apply_fault(fault, None)
            if early is not None:
                return early
            if fault.malformed:
                data = data[: len(data) // 2]
        return Response(
            data,
            mimetype="application/octet-stream",
            headers={"Content-Disposition": f"attachment; filename={name}"},
        )
