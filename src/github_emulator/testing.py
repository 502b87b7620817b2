"""Helpers for tests, demos and benchmarks: start an emulator and drive its control API.

```python
from github_emulator.testing import start_emulator

with start_emulator(orgs=["acme"], repos=["acme/app"], tokens=["t0k"]) as gh:
    gh.control.queue_job("acme/app", ["self-hosted"], ["echo hi"])
    requests.get(f"{gh.url}/orgs/acme/actions/runners", headers={"Authorization": "token t0k"})
```
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import requests

from github_emulator.app import Emulator
from github_emulator.server import EmulatorServer
from github_emulator.settings import Seed, Settings
from github_emulator.state import EmulatorState

_SETTING_NAMES = {f.name for f in dataclasses.fields(Settings)}


class ControlError(RuntimeError):
    """The control API refused a request."""


class Control:
    """A thin client for the control API (``/_emulator/``) of an emulator at ``url``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        resp = self.session.request(
            method,
            f"{self.url}/_emulator/{path}",
            json=body,
            params={k: v for k, v in params.items() if v is not None} or None,
            timeout=self.timeout,
        )
        if resp.status_code >= 400:
            raise ControlError(f"{method} /_emulator/{path}: {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    # world
    def add_org(self, login: str) -> dict[str, Any]:
        return dict(self._call("POST", "orgs", {"login": login}))

    def add_repo(self, owner: str, name: str, private: bool = True) -> dict[str, Any]:
        return dict(self._call("POST", "repos", {"owner": owner, "name": name, "private": private}))

    def add_enterprise(self, slug: str) -> dict[str, Any]:
        return dict(self._call("POST", "enterprises", {"slug": slug}))

    def add_token(
        self,
        token: str,
        orgs: Iterable[str] = (),
        repos: Iterable[str] = (),
        enterprises: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Grant ``token`` access; returns ``{"key", "index"}`` (the key names it in stats)."""
        body = {
            "token": token,
            "orgs": list(orgs),
            "repos": list(repos),
            "enterprises": list(enterprises),
        }
        return dict(self._call("POST", "tokens", body))

    def add_runner_group(self, org: str, name: str, repos: Iterable[str] | None = None) -> int:
        body: dict[str, Any] = {"org": org, "name": name}
        if repos is not None:
            body["repos"] = list(repos)
        return int(self._call("POST", "runner-groups", body)["id"])

    def add_hook(
        self,
        url: str,
        secret: str | None,
        org: str | None = None,
        repo: str | None = None,
        events: Iterable[str] = ("workflow_job",),
    ) -> int:
        body = {"url": url, "secret": secret, "org": org, "repo": repo, "events": list(events)}
        return int(self._call("POST", "hooks", body)["id"])

    def add_runners(
        self,
        count: int,
        org: str | None = None,
        repo: str | None = None,
        enterprise: str | None = None,
        labels: Sequence[str] = ("self-hosted", "linux", "x64"),
        online: bool = False,
        name_prefix: str = "sim",
        runner_group_id: int = 1,
        ephemeral: bool = True,
        jit: bool = False,
    ) -> list[int]:
        """Bulk runners without processes; ``online=True`` makes simulated ones that run jobs.

        Offline ones stay registered-but-offline, or expire like unused JIT runners with ``jit``.
        """
        body = {
            "count": count,
            "org": org,
            "repo": repo,
            "enterprise": enterprise,
            "labels": list(labels),
            "online": online,
            "name_prefix": name_prefix,
            "runner_group_id": runner_group_id,
            "ephemeral": ephemeral,
            "jit": jit,
        }
        return [int(i) for i in self._call("POST", "runners", body)["ids"]]

    def runners(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "runners"))

    # jobs
    def queue_job(
        self,
        repo: str,
        labels: Sequence[str],
        steps: Sequence[Any],
        runner_group: int | str | None = None,
        **extra: Any,
    ) -> int:
        """Queue a workflow job; steps are shell commands or ``{"name", "command"}`` dicts."""
        body = {
            "repo": repo,
            "labels": list(labels),
            "steps": list(steps),
            "runner_group": runner_group,
        }
        body.update(extra)
        return int(self._call("POST", "jobs", body)["id"])

    def get_job(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"jobs/{job_id}"))

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "jobs", status=status))

    def approve_job(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"jobs/{job_id}/approve"))

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"jobs/{job_id}/cancel"))

    def wait_job(
        self, job_id: int, status: str = "completed", timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll until the job reaches ``status`` (raises TimeoutError with the last state)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job["status"] == status:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(0.05)

    # inspection and breakage
    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "stats"))

    def reset_stats(self) -> None:
        self._call("DELETE", "stats")

    def deliveries(self, hook_id: int | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "deliveries", hook_id=hook_id))

    def wait_deliveries(self, timeout: float = 30.0) -> bool:
        return bool(self._call("POST", "deliveries/wait", {"timeout": timeout})["idle"])

    def fault(self, **spec: Any) -> dict[str, Any]:
        """Inject a fault: ``route``, ``status``, ``retry_after``, ``latency``, ``malformed``,
        ``hang``, ``count``, ``probability``, ``seed`` (see docs/emulator.md)."""
        return dict(self._call("POST", "faults", spec))

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def reset(self, full: bool = False) -> None:
        self._call("POST", "reset", {"full": full})

    def settings(self, **values: Any) -> dict[str, Any]:
        """Read (no arguments) or change settings such as ``agent_host`` or ``busy_lag``."""
        if values:
            return dict(self._call("POST", "settings", values))
        return dict(self._call("GET", "settings"))

    def set_runner_app(
        self, version: str | None = None, tamper_checksum: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"tamper_checksum": tamper_checksum}
        if version:
            body["version"] = version
        return dict(self._call("POST", "runner-app", body))


class RunningEmulator:
    """An emulator served from this process; stop it with ``stop()`` or a ``with`` block."""

    def __init__(self, emulator: Emulator, server: EmulatorServer) -> None:
        self.emulator = emulator
        self.server = server
        self.url = server.url
        self.state: EmulatorState = emulator.state
        self.control = Control(self.url)

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _seed_from(options: dict[str, Any]) -> Seed:
    tokens_opt = options.pop("tokens", None) or {}
    if isinstance(tokens_opt, str):
        tokens_opt = [tokens_opt]
    tokens: dict[str, dict[str, list[str]] | None] = (
        {t: None for t in tokens_opt} if isinstance(tokens_opt, list | tuple) else dict(tokens_opt)
    )
    hooks = list(options.pop("hooks", None) or [])
    return Seed(
        orgs=list(options.pop("orgs", None) or []),
        repos=list(options.pop("repos", None) or []),
        enterprises=list(options.pop("enterprises", None) or []),
        tokens=tokens,
        hooks=hooks,
    )


def build_emulator(**options: Any) -> Emulator:
    """An ``Emulator`` from keyword options: ``Settings`` fields plus ``orgs``, ``repos``,
    ``enterprises``, ``tokens`` (list → full access, or ``{token: {"orgs": [...], ...}}``)
    and ``hooks`` (list of ``{"url", "secret", "org"|"repo"}``)."""
    options = dict(options)
    seed = _seed_from(options)
    unknown = set(options) - _SETTING_NAMES
    if unknown:
        raise TypeError(f"unknown emulator options: {', '.join(sorted(unknown))}")
    return Emulator(Settings(**options), seed)


def start_emulator(host: str = "127.0.0.1", port: int = 0, **options: Any) -> RunningEmulator:
    """Start an emulator on ``host:port`` (port 0 = a free one) in background threads."""
    emulator = build_emulator(**options)
    server = EmulatorServer(emulator, host, port).start()
    return RunningEmulator(emulator, server)


def spawn_emulator_process(
    args: Sequence[str] = (),
    timeout: float = 30.0,
    stderr: int | IO[Any] | None = None,
    host: str = "127.0.0.1",
) -> tuple[subprocess.Popen[str], str]:
    """Run ``python -m github_emulator --host H --port 0 --print-url ARGS``; returns (process, url).

    Stop it with ``proc.terminate(); proc.wait()`` (SIGTERM ends it cleanly).
    """
    src = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "github_emulator",
            "--host",
            host,
            "--port",
            "0",
            "--print-url",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    line: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        line.append(proc.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    url = line[0].strip() if line else ""
    if not url.startswith("http"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"github_emulator did not print its URL within {timeout}s (got {url!r})")
    return proc, url
