"""``python -m github_emulator`` as a process: flags, URL on stdout, clean SIGTERM."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from collections.abc import Iterator

import pytest
import requests

from github_emulator.testing import spawn_emulator_process


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_command_line_world_and_sigterm(spawned: list[subprocess.Popen[str]]) -> None:
    proc, url = spawn_emulator_process(
        [
            "--org",
            "acme",
            "--repo",
            "acme/app",
            "--repo",
            "solo/tool",
            "--enterprise",
            "bigcorp",
            "--token",
            "cli-token",
            "--hook-url",
            "http://127.0.0.1:9/hook",
            "--hook-secret",
            "s",
            "--agent-host",
            "10.151.12.1",
            "--rate-limit",
            "50",
            "--jit-expiry",
            "60",
        ],
        stderr=subprocess.DEVNULL,
    )
    spawned.append(proc)
    assert url.startswith("http://127.0.0.1:")
    auth = {"Authorization": "token cli-token"}
    for path in (
        "/orgs/acme/actions/runners",
        "/repos/solo/tool/actions/runners",
        "/enterprises/bigcorp/actions/runners",
    ):
        resp = requests.get(url + path, headers=auth, timeout=30)
        assert resp.status_code == 200, path
        assert resp.headers["x-ratelimit-limit"] == "50"
    jit = requests.post(
        f"{url}/orgs/acme/actions/runners/generate-jitconfig",
        headers=auth,
        json={"name": "r", "runner_group_id": 1, "labels": ["self-hosted"]},
        timeout=30,
    ).json()
    port = url.rsplit(":", 1)[1]
    assert (
        json.loads(base64.b64decode(jit["encoded_jit_config"]))["agent_url"]
        == f"http://10.151.12.1:{port}"
    )
    hooks = requests.get(f"{url}/_emulator/hooks", timeout=30).json()
    assert sorted(h["scope"] for h in hooks) == ["org:acme", "repo:solo/tool"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_sigint_also_stops_it(spawned: list[subprocess.Popen[str]]) -> None:
    proc, url = spawn_emulator_process([], stderr=subprocess.DEVNULL)
    spawned.append(proc)
    assert requests.get(f"{url}/_emulator/health", timeout=30).json()["ok"] is True
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
