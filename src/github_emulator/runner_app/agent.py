#!/usr/bin/env python3
"""Runner agent of the github_emulator runner application (shipped as ``bin/Runner.Listener``).

Python 3 standard library only, so it runs in a minimal Debian container. It speaks the
emulator's own agent protocol (see docs/emulator.md): configure with a registration token or
take a JIT config, connect, long-poll for a job, run each step with ``sh -c`` and report exit
code and output, complete the job, and exit after one job when ephemeral. One log line per event.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, ".runner")
MAX_OUTPUT = 64 * 1024
HEARTBEAT_INTERVAL = 2.0
JIT_ENV = "ACTIONS_RUNNER_INPUT_JITCONFIG"


def runner_version() -> str:
    try:
        with open(os.path.join(ROOT, ".runner-version"), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return "0.0.0"


def runner_arch() -> str:
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "ARM64"
    if machine.startswith("arm"):
        return "ARM"
    return "X64"


def log(message: str, **fields: Any) -> None:
    """One line per event, like the real runner's console output (never a secret)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"{stamp}: {message}" + (f" [{extra}]" if extra else ""), flush=True)


class ShutdownError(Exception):
    """Raised from the signal handler to leave blocking calls promptly."""


class AgentError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Client:
    """A tiny JSON-over-HTTP client for the agent API."""

    def __init__(self, base_url: str, secret: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310
        req.add_header("Content-Type", "application/json")
        req.add_header("User-Agent", f"GitHubActionsRunner-emulator/{runner_version()}")
        if self.secret:
            req.add_header("Authorization", f"Bearer {self.secret}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("message", "")
            except ValueError:
                message = raw[:200].decode(errors="replace")
            raise AgentError(exc.code, message) from None


def call_with_retry(
    client: Client, method: str, path: str, body: Any = None, timeout: float = 30.0, tries: int = 30
) -> tuple[int, Any]:
    """Retry connection failures and 5xx with backoff; 4xx are final."""
    delay = 0.2
    for attempt in range(tries):
        try:
            return client.call(method, path, body, timeout)
        except AgentError as exc:
            if exc.status < 500 or attempt == tries - 1:
                raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if attempt == tries - 1:
                raise AgentError(0, f"cannot reach {client.base_url}: {exc}") from None
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise AgentError(0, "unreachable")


# ---------------------------------------------------------------------------- configure / remove
def configure(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="config.sh")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--name", default=socket.gethostname())
    parser.add_argument("--labels", default="")
    parser.add_argument("--runnergroup", default=None)
    parser.add_argument("--work", default="_work")
    parser.add_argument("--ephemeral", action="store_true")
    parser.add_argument("--replace", action="store_true")
    parser.add_argument("--unattended", action="store_true")
    parser.add_argument("--no-default-labels", action="store_true")
    parser.add_argument("--disableupdate", action="store_true")
    args = parser.parse_args(argv)
    parsed = urllib.parse.urlsplit(args.url)
    base = f"{parsed.scheme}://{parsed.netloc}"
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    log("Connecting to GitHub", url=args.url)
    try:
        _, config = call_with_retry(
            Client(base),
            "POST",
            "/_agent/v1/register",
            {
                "token": args.token,
                "url": args.url,
                "name": args.name,
                "labels": labels,
                "runner_group": args.runnergroup,
                "ephemeral": args.ephemeral,
                "replace": args.replace,
                "no_default_labels": args.no_default_labels,
                "work_folder": args.work,
                "arch": runner_arch(),
            },
            tries=10,
        )
    except AgentError as exc:
        log("Failed to register runner", error=str(exc))
        return 1
    fd = os.open(CONFIG_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(config, fh)
    log("Runner successfully added", name=config["runner_name"], runner_id=config["runner_id"])
    log("Settings Saved.")
    return 0


def remove(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="config.sh remove")
    parser.add_argument("--token", required=True)
    args = parser.parse_args(argv)
    try:
        with open(CONFIG_FILE, encoding="utf-8") as fh:
            config = json.load(fh)
    except OSError:
        log("Runner is not configured")
        return 1
    try:
        call_with_retry(
            Client(config["agent_url"]),
            "POST",
            "/_agent/v1/unregister",
            {"token": args.token, "runner_id": config["runner_id"]},
            tries=5,
        )
    except AgentError as exc:
        log("Failed to remove runner", error=str(exc))
        return 1
    os.unlink(CONFIG_FILE)
    log("Runner removed successfully", runner_id=config["runner_id"])
    return 0


# ---------------------------------------------------------------------------- run
class Runner:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.id = int(config["runner_id"])
        self.name = str(config["runner_name"])
        self.client = Client(config["agent_url"], config["agent_secret"])
        self.ephemeral = bool(config.get("ephemeral", False))
        self.work = os.path.join(ROOT, config.get("work_folder") or "_work")
        self.cancel = threading.Event()
        self.current: subprocess.Popen[bytes] | None = None
        self.job_id: int | None = None
        self.poll_wait = 5.0
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self._stop_beat = threading.Event()

    def path(self, suffix: str) -> str:
        return f"/_agent/v1/runners/{self.id}{suffix}"

    def connect(self) -> None:
        _, info = call_with_retry(
            self.client,
            "POST",
            self.path("/connect"),
            {
                "version": runner_version(),
                "os": "Linux" if sys.platform.startswith("linux") else sys.platform,
                "arch": runner_arch(),
                "hostname": socket.gethostname(),
            },
            tries=60,
        )
        self.poll_wait = float((info or {}).get("poll_wait", 5))
        self.heartbeat_interval = float((info or {}).get("heartbeat_interval", HEARTBEAT_INTERVAL))
        log("Connected to GitHub", runner=self.name, runner_id=self.id)
        log(f"Current runner version: '{runner_version()}'")

    def serve(self) -> int:
        self.connect()
        log("Listening for Jobs")
        while True:
            try:
                status, data = call_with_retry(
                    self.client,
                    "GET",
                    self.path(f"/jobs/next?wait={self.poll_wait:g}"),
                    timeout=self.poll_wait + 30,
                    tries=120,
                )
            except AgentError as exc:
                if exc.status in (401, 404):
                    log("Runner registration has been deleted from the server", error=str(exc))
                    return 1
                raise
            if status == 204 or not data or not data.get("job"):
                continue
            removed = self.run_job(data["job"])
            if self.ephemeral or removed:
                log("Ephemeral runner finished its job; exiting", runner=self.name)
                return 0
            log("Listening for Jobs")

    # ------------------------------------------------------------------ one job
    def run_job(self, job: dict[str, Any]) -> bool:
        self.job_id = int(job["id"])
        self.cancel.clear()
        log(f"Running job: {job['name']}", job_id=self.job_id, repo=job.get("repository"))
        stop_beat = threading.Event()
        self._stop_beat = stop_beat
        threading.Thread(target=self.heartbeat, daemon=True).start()
        failed = False
        cancelled = False
        workspace = os.path.join(self.work, str(job.get("repository", "repo")).split("/")[-1])
        os.makedirs(workspace, exist_ok=True)
        try:
            for step in job.get("steps", []):
                if self.cancel.is_set():
                    cancelled = True
                    break
                if failed:
                    log(f"Skipping step: {step['name']}", step=step["number"])
                    continue
                exit_code, output, outcome = self.run_step(job, step, workspace)
                if outcome == "cancelled":
                    cancelled = True
                elif exit_code != 0 and not step.get("continue_on_error"):
                    failed = True
                _, reply = call_with_retry(
                    self.client,
                    "POST",
                    self.path(f"/jobs/{self.job_id}/steps/{step['number']}"),
                    {
                        "status": "completed",
                        "exit_code": exit_code,
                        "output": output,
                        "conclusion": outcome,
                    },
                )
                if (reply or {}).get("cancel"):
                    self.cancel.set()
                if cancelled:
                    break
        finally:
            stop_beat.set()
        conclusion = (
            "cancelled"
            if cancelled or self.cancel.is_set()
            else ("failure" if failed else "success")
        )
        _, reply = call_with_retry(
            self.client,
            "POST",
            self.path(f"/jobs/{self.job_id}/complete"),
            {"conclusion": conclusion},
        )
        result = {"success": "Succeeded", "failure": "Failed", "cancelled": "Canceled"}[conclusion]
        log(f"Job {job['name']} completed with result: {result}", job_id=self.job_id)
        self.job_id = None
        return bool((reply or {}).get("removed"))

    def run_step(
        self, job: dict[str, Any], step: dict[str, Any], workspace: str
    ) -> tuple[int, str, str]:
        number = step["number"]
        call_with_retry(
            self.client,
            "POST",
            self.path(f"/jobs/{self.job_id}/steps/{number}"),
            {"status": "in_progress"},
        )
        timeout = float(step.get("timeout") or job.get("step_timeout") or 600)
        log(f"Running step: {step['name']}", step=number)
        env = {k: v for k, v in os.environ.items() if k != JIT_ENV}
        env.update(
            {
                "CI": "true",
                "GITHUB_ACTIONS": "true",
                "GITHUB_JOB": str(job.get("name", "")),
                "GITHUB_RUN_ID": str(job.get("run_id", "")),
                "GITHUB_REPOSITORY": str(job.get("repository", "")),
                "GITHUB_WORKSPACE": workspace,
                "RUNNER_NAME": self.name,
                "RUNNER_OS": "Linux",
                "RUNNER_ARCH": runner_arch(),
                "RUNNER_WORKSPACE": self.work,
            }
        )
        env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
        outcome = "success"
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                ["sh", "-c", step["command"]],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workspace,
                env=env,
                start_new_session=True,
            )
            self.current = proc
            deadline = time.monotonic() + timeout
            exit_code = -1
            try:
                while True:
                    try:
                        exit_code = proc.wait(timeout=0.1)
                        break
                    except subprocess.TimeoutExpired:
                        if self.cancel.is_set():
                            outcome = "cancelled"
                        elif time.monotonic() > deadline:
                            outcome = "timed_out"
                        else:
                            continue
                        self.kill(proc)
                        exit_code = proc.wait()
                        break
            finally:
                if proc.poll() is None:
                    self.kill(proc)
                    proc.wait()
                self.current = None
            size = out.tell()
            out.seek(0)
            if size > MAX_OUTPUT:
                head = out.read(MAX_OUTPUT // 2)
                out.seek(size - MAX_OUTPUT // 2)
                tail = out.read()
                raw = head + f"\n...[{size - MAX_OUTPUT} bytes truncated]...\n".encode() + tail
            else:
                raw = out.read()
        output = raw.decode("utf-8", errors="replace")
        if outcome == "timed_out":
            output += f"\n##[error]The step exceeded its timeout of {timeout:g} seconds.\n"
            exit_code = 124
            outcome = "failure"
        elif outcome == "success" and exit_code != 0:
            outcome = "failure"
        log(f"Finished step: {step['name']}", step=number, exit_code=exit_code, result=outcome)
        return exit_code, output, outcome

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()

    def heartbeat(self) -> None:
        while not self._stop_beat.wait(self.heartbeat_interval):
            job_id = self.job_id
            if job_id is None:
                return
            try:
                _, reply = self.client.call("POST", self.path(f"/jobs/{job_id}/heartbeat"), {}, 10)
            except (AgentError, OSError, ValueError):
                continue
            if (reply or {}).get("cancel") and not self.cancel.is_set():
                log("The job was cancelled", job_id=job_id)
                self.cancel.set()

    def shutdown(self) -> None:
        proc = self.current
        if proc is not None and proc.poll() is None:
            self.kill(proc)
        if self.job_id is not None:
            with contextlib.suppress(AgentError, OSError, ValueError):
                self.client.call(
                    "POST",
                    self.path(f"/jobs/{self.job_id}/complete"),
                    {"conclusion": "cancelled"},
                    5,
                )
        with contextlib.suppress(AgentError, OSError, ValueError):
            self.client.call("POST", self.path("/disconnect"), {}, 5)


def load_config(jitconfig: str | None) -> dict[str, Any]:
    encoded = jitconfig or os.environ.get(JIT_ENV)
    if encoded:
        return dict(json.loads(base64.b64decode(encoded)))
    with open(CONFIG_FILE, encoding="utf-8") as fh:
        return dict(json.load(fh))


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run.sh")
    parser.add_argument("--jitconfig", default=None)
    parser.add_argument("--once", action="store_true", help="exit after one job (like --ephemeral)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.jitconfig)
    except (OSError, ValueError) as exc:
        log("Runner is not configured: run config.sh or pass --jitconfig", error=type(exc).__name__)
        return 1
    runner = Runner(config)
    if args.once:
        runner.ephemeral = True

    def on_signal(signum: int, _frame: Any) -> None:
        raise ShutdownError(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return runner.serve()
    except ShutdownError as exc:
        log("Runner received a shutdown signal", signal=str(exc))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        runner.shutdown()
        return 0
    except AgentError as exc:
        log("Runner stopped: the server could not be reached", error=str(exc))
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "run"
    if command == "configure":
        if argv and argv[0] == "remove":
            return remove(argv[1:])
        return configure(argv)
    if command == "remove":
        return remove(argv)
    if command == "run":
        return run(argv)
    print(f"unknown command {command!r}; use configure, remove or run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
