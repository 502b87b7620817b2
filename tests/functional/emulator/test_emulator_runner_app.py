"""The runner application, as a real local process: download, verify, configure, run jobs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from emulator_testlib import AUTH, ORG, REPO, HookReceiver, wait_until

from github_emulator.runner_app import build_tarball
from github_emulator.testing import RunningEmulator

RUNNERS = f"/orgs/{ORG}/actions/runners"


def download_runner_app(emu: RunningEmulator, dest: Path, arch: str = "x64") -> Path:
    """What the manager does: list downloads, fetch, verify sha256, unpack."""
    listing = requests.get(f"{emu.url}{RUNNERS}/downloads", headers=AUTH, timeout=30).json()
    entry = next(e for e in listing if e["os"] == "linux" and e["architecture"] == arch)
    assert entry["download_url"].startswith(emu.url + "/_emulator/runner-app/")
    data = requests.get(entry["download_url"], timeout=30).content
    assert hashlib.sha256(data).hexdigest() == entry["sha256_checksum"]
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def start_runner(
    processes: list[subprocess.Popen[str]], runner_dir: Path, *args: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["sh", "run.sh", *args],
        cwd=runner_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    processes.append(proc)
    return proc


def jit_config(emu: RunningEmulator, name: str, labels: list[str]) -> dict[str, Any]:
    resp = requests.post(
        f"{emu.url}{RUNNERS}/generate-jitconfig",
        headers=AUTH,
        json={"name": name, "runner_group_id": 1, "labels": labels},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def rest_runner(emu: RunningEmulator, runner_id: int) -> dict[str, Any] | None:
    resp = requests.get(f"{emu.url}{RUNNERS}/{runner_id}", headers=AUTH, timeout=30)
    return resp.json() if resp.status_code == 200 else None


def test_jit_runner_runs_a_failing_job_and_leaves(
    emu: RunningEmulator,
    hook_receiver: HookReceiver,
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    secret = "It's a Secret to Everybody"
    emu.control.add_hook(hook_receiver.url, secret, org=ORG)
    runner_dir = download_runner_app(emu, tmp_path / "runner")
    for name in ("config.sh", "run.sh", "bin/Runner.Listener", ".runner-version"):
        assert (runner_dir / name).is_file()
    jit = jit_config(emu, "jit-runner-1", ["self-hosted", "linux", "x64", "emu-test"])
    runner_id = jit["runner"]["id"]
    assert rest_runner(emu, runner_id)["status"] == "offline"

    job_id = emu.control.queue_job(
        REPO,
        ["self-hosted", "EMU-TEST"],
        [{"name": "greet", "command": "echo hello"}, "uname -a", "exit 3"],
    )
    proc = start_runner(processes, runner_dir, "--jitconfig", jit["encoded_jit_config"])
    job = emu.control.wait_job(job_id, timeout=30)
    assert proc.wait(timeout=30) == 0
    log = proc.stdout.read() if proc.stdout else ""

    assert job["conclusion"] == "failure"
    assert job["runner_name"] == "jit-runner-1" and job["runner_id"] == runner_id
    assert job["queued_at"] <= job["started_at"] <= job["completed_at"]
    greet, uname, fail = job["steps"]
    assert (greet["name"], greet["exit_code"], greet["output"]) == ("greet", 0, "hello\n")
    assert uname["exit_code"] == 0 and uname["output"].startswith("Linux")
    assert (
        fail["command"] == "exit 3" and fail["exit_code"] == 3 and fail["conclusion"] == "failure"
    )
    assert "Listening for Jobs" in log and "completed with result: Failed" in log
    assert jit["encoded_jit_config"] not in log

    # Ephemeral: GitHub removes the runner after its one job.
    assert rest_runner(emu, runner_id) is None
    names = [
        r["name"]
        for r in requests.get(emu.url + RUNNERS, headers=AUTH, timeout=30).json()["runners"]
    ]
    assert "jit-runner-1" not in names

    # queued → in_progress → completed, each signed with the hook secret.
    received = hook_receiver.wait_for(3)
    assert [e["payload"]["action"] for e in received] == ["queued", "in_progress", "completed"]
    for entry in received:
        expected = "sha256=" + hmac.new(secret.encode(), entry["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(entry["headers"]["X-Hub-Signature-256"], expected)
        assert entry["headers"]["X-Github-Event"] == "workflow_job"
        assert entry["headers"]["User-Agent"].startswith("GitHub-Hookshot/")
    completed = received[-1]["payload"]["workflow_job"]
    assert completed["conclusion"] == "failure" and completed["runner_name"] == "jit-runner-1"
    assert len({e["headers"]["X-Github-Delivery"] for e in received}) == 3


def test_registered_runner_goes_online_and_takes_a_job(
    emu: RunningEmulator, processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    runner_dir = download_runner_app(emu, tmp_path / "runner")
    token = requests.post(
        f"{emu.url}/repos/{REPO}/actions/runners/registration-token", headers=AUTH, timeout=30
    ).json()["token"]
    configured = subprocess.run(
        [
            "sh",
            "config.sh",
            "--url",
            f"{emu.url}/{REPO}",
            "--token",
            token,
            "--name",
            "reg-runner",
            "--labels",
            "build,docker",
            "--ephemeral",
            "--unattended",
        ],
        cwd=runner_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert token not in configured.stdout
    listed = requests.get(
        f"{emu.url}/repos/{REPO}/actions/runners", headers=AUTH, timeout=30
    ).json()
    (runner,) = listed["runners"]
    assert (
        runner["name"] == "reg-runner"
        and runner["status"] == "offline"
        and runner["version"] is None
    )
    assert {lb["name"]: lb["type"] for lb in runner["labels"]} == {
        "self-hosted": "read-only",
        "Linux": "read-only",
        "X64": "read-only",
        "build": "custom",
        "docker": "custom",
    }

    proc = start_runner(processes, runner_dir)
    url = f"{emu.url}/repos/{REPO}/actions/runners/{runner['id']}"

    def online() -> dict[str, Any] | None:
        body = requests.get(url, headers=AUTH, timeout=30).json()
        return body if body["status"] == "online" else None

    body = wait_until(online, timeout=20)
    assert body["busy"] is False and body["os"] == "Linux" and body["version"] == "2.321.0"

    job_id = emu.control.queue_job(REPO, ["docker"], ['echo "repo=$GITHUB_REPOSITORY"'])
    job = emu.control.wait_job(job_id, timeout=30)
    assert job["conclusion"] == "success"
    assert job["steps"][0]["output"] == f"repo={REPO}\n"
    assert proc.wait(timeout=30) == 0


def test_busy_flag_lags_and_lost_runners_go_offline(
    emulator_factory: Callable[..., RunningEmulator],
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    emu = emulator_factory(busy_lag=2.0, offline_after=4.0)
    runner_dir = download_runner_app(emu, tmp_path / "runner")
    jit = jit_config(emu, "laggy", ["self-hosted", "lag"])
    runner_id = jit["runner"]["id"]
    proc = start_runner(processes, runner_dir, "--jitconfig", jit["encoded_jit_config"])
    wait_until(lambda: (rest_runner(emu, runner_id) or {}).get("status") == "online", timeout=20)

    job_id = emu.control.queue_job(REPO, ["lag"], ["sleep 30"])
    started = emu.control.wait_job(job_id, status="in_progress", timeout=20)["started_at"]
    body = rest_runner(emu, runner_id)
    assert emu.state.runners[runner_id].job_id == job_id  # really busy...
    if time.time() - started < 1.5:
        assert body is not None and body["busy"] is False  # ...but GitHub's REST flag trails
    wait_until(lambda: (rest_runner(emu, runner_id) or {}).get("busy") is True, timeout=10)

    # The agent dies mid-job: the runner goes offline and stays registered; the job fails.
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_until(lambda: (rest_runner(emu, runner_id) or {}).get("status") == "offline", timeout=20)
    job = emu.control.wait_job(job_id, timeout=20)
    assert job["conclusion"] == "failure"
    lost = rest_runner(emu, runner_id)
    assert lost is not None and lost["status"] == "offline" and lost["busy"] is False


def test_cancel_and_step_timeout(
    emu: RunningEmulator, processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    runner_dir = download_runner_app(emu, tmp_path / "runner")
    first = jit_config(emu, "timeout-runner", ["self-hosted", "t1"])
    start_runner(processes, runner_dir, "--jitconfig", first["encoded_jit_config"])
    timed = emu.control.queue_job(
        REPO,
        ["t1"],
        [{"name": "slow", "command": "echo start; sleep 20", "timeout": 1}, "echo never"],
    )
    job = emu.control.wait_job(timed, timeout=30)
    assert job["conclusion"] == "failure"
    slow, never = job["steps"]
    assert slow["exit_code"] == 124 and slow["output"].startswith("start\n")
    assert "timeout" in slow["output"]
    assert never["conclusion"] == "skipped" and never["exit_code"] is None

    second = jit_config(emu, "cancel-runner", ["self-hosted", "t2"])
    proc = start_runner(processes, runner_dir, "--jitconfig", second["encoded_jit_config"])
    cancelled = emu.control.queue_job(REPO, ["t2"], ["sleep 30"])
    emu.control.wait_job(cancelled, status="in_progress", timeout=20)
    wait_until(
        lambda: emu.control.get_job(cancelled)["steps"][0]["status"] == "in_progress", timeout=10
    )
    emu.control.cancel_job(cancelled)
    job = emu.control.wait_job(cancelled, timeout=20)
    assert job["conclusion"] == "cancelled"
    assert proc.wait(timeout=20) == 0


def test_sigterm_disconnects_an_idle_runner(
    emu: RunningEmulator, processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    runner_dir = download_runner_app(emu, tmp_path / "runner")
    jit = jit_config(emu, "idle", ["self-hosted"])
    runner_id = jit["runner"]["id"]
    proc = start_runner(processes, runner_dir, "--jitconfig", jit["encoded_jit_config"])
    wait_until(lambda: (rest_runner(emu, runner_id) or {}).get("status") == "online", timeout=20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert rest_runner(emu, runner_id)["status"] == "offline"


def test_unused_jit_registrations_expire(emulator_factory: Callable[..., RunningEmulator]) -> None:
    emu = emulator_factory(jit_expiry=0.3)
    jit = jit_config(emu, "never-started", ["self-hosted"])
    wait_until(lambda: rest_runner(emu, jit["runner"]["id"]) is None, timeout=10)


def test_downloads_are_deterministic_and_tamperable(emu: RunningEmulator, tmp_path: Path) -> None:
    assert build_tarball("2.321.0") == build_tarball("2.321.0")
    assert build_tarball("2.321.0", "arm64") != build_tarball("2.321.0", "x64")
    listing = requests.get(f"{emu.url}{RUNNERS}/downloads", headers=AUTH, timeout=30).json()
    platforms = {(e["os"], e["architecture"]) for e in listing}
    assert {("linux", "x64"), ("linux", "arm64")} <= platforms
    arm = next(e for e in listing if (e["os"], e["architecture"]) == ("linux", "arm64"))
    assert arm["filename"] == "actions-runner-linux-arm64-2.321.0.tar.gz"
    assert hashlib.sha256(build_tarball("2.321.0", "arm64")).hexdigest() == arm["sha256_checksum"]

    emu.control.set_runner_app(version="2.400.1", tamper_checksum=True)
    listing = requests.get(
        f"{emu.url}/repos/{REPO}/actions/runners/downloads", headers=AUTH, timeout=30
    ).json()
    entry = next(e for e in listing if (e["os"], e["architecture"]) == ("linux", "x64"))
    assert entry["filename"] == "actions-runner-linux-x64-2.400.1.tar.gz"
    data = requests.get(entry["download_url"], timeout=30).content
    assert hashlib.sha256(data).hexdigest() != entry["sha256_checksum"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(".runner-version")
        assert member is not None and member.read() == b"2.400.1\n"


def test_agent_host_is_written_into_jit_configs(
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    emu = emulator_factory(host="0.0.0.0", agent_host="10.151.12.1")
    assert emu.url == f"http://127.0.0.1:{emu.port}"

    def agent_url() -> str:
        encoded = jit_config(emu, f"r{len(emu.state.runners)}", ["self-hosted"])[
            "encoded_jit_config"
        ]
        return str(json.loads(base64.b64decode(encoded))["agent_url"])

    assert agent_url() == f"http://10.151.12.1:{emu.port}"
    emu.control.settings(agent_host="172.17.0.1")
    assert agent_url() == f"http://172.17.0.1:{emu.port}"
    emu.control.settings(agent_host=None)
    assert agent_url() == emu.url
