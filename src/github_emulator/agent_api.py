"""The runner-agent API (``/_agent/v1``): the emulator's own protocol, spoken by its runner app.

It is not GitHub's broker protocol and the manager never depends on it; docs/emulator.md
describes it. Runners authenticate with the per-runner secret from their JIT config or from
registration (``Authorization: Bearer <agent_secret>``), never with a GitHub token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from flask import Flask, Response, request
from werkzeug.local import LocalProxy

from github_emulator.state import DEFAULT_GROUP_ID, EmulatorError, Job, Runner, not_found

if TYPE_CHECKING:
    from github_emulator.app import Emulator
    from github_emulator.state import EmulatorState

PREFIX = "/_agent/v1"
DEFAULT_LABELS = ("self-hosted", "Linux", "X64")


def _json(body: Any, status: int = 200) -> Response:
    from github_emulator.app import _json_response

    return _json_response(body, status)


def register(app: Flask, emu: Emulator) -> None:
    state = cast("EmulatorState", LocalProxy(lambda: emu.state))

    def runner_from_request(runner_id: int) -> Runner:
        emu.stats.bump("agent_requests")
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise EmulatorError(401, "runner credentials required")
        return state.runner_by_secret(runner_id, secret.strip())

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}

    def job_of(runner: Runner, job_id: int) -> Job:
        job = state.jobs.get(job_id)
        if job is None or job.runner_id != runner.id:
            raise not_found()
        return job

    def job_message(job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "run_id": job.run_id,
            "name": job.name,
            "workflow_name": job.workflow_name,
            "repository": job.repo,
            "labels": list(job.labels),
            "step_timeout": emu.settings.step_timeout,
            "steps": [
                {
                    "number": s.number,
                    "name": s.name,
                    "command": s.command,
                    "timeout": s.timeout,
                    "continue_on_error": s.continue_on_error,
                }
                for s in job.steps
            ],
            "env": {},
        }

    @app.post(f"{PREFIX}/register")
    def agent_register() -> Response:
        """``config.sh``: trade a registration token for a runner and its agent secret."""
        emu.stats.bump("agent_requests")
        data = body()
        reg = state.use_token(str(data.get("token", "")), "registration")
        url = str(data.get("url", ""))
        parts = [p for p in urlsplit(url).path.split("/") if p]
        if len(parts) == 2 and parts[0] == "enterprises":
            kind, scope = "enterprise", parts[1]
        elif len(parts) == 2:
            kind, scope = "repo", f"{parts[0]}/{parts[1]}"
        elif len(parts) == 1:
            kind, scope = "org", parts[0]
        else:
            raise EmulatorError(404, f"cannot register a runner at {url!r}")
        if kind != reg.scope_kind or scope.lower() != reg.scope.lower():
            raise EmulatorError(404, f"the registration token is not valid for {url!r}")
        group_id = DEFAULT_GROUP_ID
        group_name = data.get("runner_group")
        if group_name and kind == "org":
            matches = [
                g for g in state.groups_of(reg.scope) if g.name.lower() == str(group_name).lower()
            ]
            if not matches:
                raise EmulatorError(404, f"runner group {group_name!r} not found")
            group_id = matches[0].id
        arch = str(data.get("arch") or "X64")
        defaults = () if data.get("no_default_labels") else ("self-hosted", "Linux", arch)
        labels = [str(x) for x in data.get("labels") or []]
        if not labels and not defaults:
            raise EmulatorError(422, "a runner needs at least one label")
        name = str(data.get("name") or "").strip()
        if not name:
            raise EmulatorError(422, "a runner needs a name")
        with state.lock:
            runner = state.create_runner(
                kind,
                reg.scope,
                name,
                labels,
                runner_group_id=group_id,
                ephemeral=bool(data.get("ephemeral")),
                jit=False,
                replace=bool(data.get("replace")),
                default_labels=defaults,
            )
            parsed = urlsplit(url)
            agent_url = f"{parsed.scheme}://{parsed.netloc}"
            config = {
                "v": 1,
                "agent_url": agent_url,
                "runner_id": runner.id,
                "runner_name": runner.name,
                "agent_secret": runner.secret,
                "labels": [lb.name for lb in runner.labels],
                "ephemeral": runner.ephemeral,
                "work_folder": str(data.get("work_folder") or "_work"),
                "scope": f"{kind}:{reg.scope}",
                "runner_group_id": runner.runner_group_id,
            }
        return _json(config, 201)

    @app.post(f"{PREFIX}/unregister")
    def agent_unregister() -> Response:
        """``config.sh remove``: a remove token for the runner's scope removes it."""
        emu.stats.bump("agent_requests")
        data = body()
        reg = state.use_token(str(data.get("token", "")), "remove")
        with state.lock:
            runner = state.runners.get(int(data.get("runner_id", 0)))
            if runner is None:
                raise not_found()
            if reg.scope_kind != runner.scope_kind or reg.scope.lower() != runner.scope.lower():
                raise EmulatorError(403, "the remove token is not valid for this runner")
            state.delete_runner(runner)
        return _json(None, 204)

    @app.post(f"{PREFIX}/runners/<int:runner_id>/connect")
    def agent_connect(runner_id: int) -> Response:
        runner = runner_from_request(runner_id)
        data = body()
        state.agent_seen(
            runner,
            os=str(data.get("os") or "Linux"),
            arch=data.get("arch"),
            version=data.get("version"),
            hostname=data.get("hostname"),
        )
        return _json(
            {
                "runner_id": runner.id,
                "poll_wait": emu.settings.poll_wait,
                # Well inside offline_after, so a runner busy with a long step stays online.
                "heartbeat_interval": max(0.2, min(1.0, emu.settings.offline_after / 4)),
            }
        )

    @app.get(f"{PREFIX}/runners/<int:runner_id>/jobs/next")
    def agent_next_job(runner_id: int) -> Response:
        runner = runner_from_request(runner_id)
        try:
            wait = float(request.args.get("wait", emu.settings.poll_wait))
        except ValueError:
            wait = emu.settings.poll_wait
        wait = max(0.0, min(wait, emu.settings.poll_wait, 60.0))
        job = state.wait_for_job(runner, wait)
        if job is None:
            if runner.id not in state.runners:
                raise EmulatorError(404, "runner not found (removed or expired)")
            return Response(status=204)
        with state.lock:
            return _json({"job": job_message(job)})

    @app.post(f"{PREFIX}/runners/<int:runner_id>/jobs/<int:job_id>/steps/<int:number>")
    def agent_step(runner_id: int, job_id: int, number: int) -> Response:
        runner = runner_from_request(runner_id)
        state.agent_seen(runner)
        data = body()
        with state.lock:
            job = job_of(runner, job_id)
            if data.get("status") == "in_progress":
                state.step_started(runner, job, number)
            else:
                exit_code = data.get("exit_code")
                state.step_finished(
                    runner,
                    job,
                    number,
                    int(exit_code) if isinstance(exit_code, int) else 1,
                    str(data.get("output") or ""),
                    data.get("conclusion"),
                )
            return _json({"cancel": job.cancel_requested})

    @app.post(f"{PREFIX}/runners/<int:runner_id>/jobs/<int:job_id>/heartbeat")
    def agent_heartbeat(runner_id: int, job_id: int) -> Response:
        runner = runner_from_request(runner_id)
        state.agent_seen(runner)
        with state.lock:
            job = job_of(runner, job_id)
            return _json({"cancel": job.cancel_requested, "status": job.status})

    @app.post(f"{PREFIX}/runners/<int:runner_id>/jobs/<int:job_id>/complete")
    def agent_complete(runner_id: int, job_id: int) -> Response:
        runner = runner_from_request(runner_id)
        state.agent_seen(runner)
        with state.lock:
            job = job_of(runner, job_id)
            if job.status == "completed":
                return _json(
                    {"removed": runner.id not in state.runners, "conclusion": job.conclusion}
                )
            removed = state.complete_job(runner, job, body().get("conclusion"))
            return _json({"removed": removed, "conclusion": job.conclusion})

    @app.post(f"{PREFIX}/runners/<int:runner_id>/disconnect")
    def agent_disconnect(runner_id: int) -> Response:
        runner = runner_from_request(runner_id)
        state.agent_gone(runner)
        return Response(status=204)
