"""The `github-runner-manager` CLI: help, dumpconfig redaction, one-line errors with exit codes, commands.

Most cases call ``cli.main([...])`` in process (fast); a few run the installed console script and
``python -m`` as real subprocesses to check the entry point, signals and the absence of tracebacks.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.functional.manager.test_manager_e2e import (
    SECRET,
    TOKEN,
    cli_env,
    manager_config,
    our_github_runners,
    setup_world,
)
from tests.parts import free_port, wait_for

from github_runner_manager import cli

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def memory_config(
    tmp_path: Path, emulator_url: str, redis_url: str, **overrides: Any
) -> dict[str, Any]:
    data = manager_config(
        tmp_path, "u0", emulator_url, redis_url, fake={"mode": "memory"}, **overrides
    )
    data["runner_groups"][0]["min_idle"] = 2
    return data


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in (
        "run",
        "reconcile",
        "flush",
        "status",
        "dumpconfig",
        "update-runner-bin",
        "build-image",
    ):
        assert command in out
    assert "--config" in out and "--log-level" in out
    assert cli.main(["--config", "x.yaml", "flush", "--help"]) == 0
    assert "--busy" in capsys.readouterr().out


def test_dumpconfig_redacts_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = manager_config(
        tmp_path, "u0", "http://127.0.0.1:9", "redis://:hunter2pass@127.0.0.1:6379/0"
    )
    path = write(tmp_path, data)
    assert cli.main(["--config", str(path), "dumpconfig"]) == 0
    captured = capsys.readouterr()
    assert (
        TOKEN not in captured.out
        and SECRET not in captured.out
        and "hunter2pass" not in captured.out
    )
    assert "**********" in captured.out
    dumped = yaml.safe_load(captured.out)
    assert dumped["github"]["token"] == "**********"
    assert dumped["runner_groups"][0]["name"] == "small"
    assert dumped["reconcile_interval"] == "3s"  # effective values, human forms
    assert dumped["webhook"]["secret"] == "**********"


@pytest.mark.parametrize(
    ("mutate", "key_path"),
    [
        (lambda d: d["runner_groups"][1].update(memory="lots"), "runner_groups[1].memory"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["github"].update(paths=["acme/app/x"]), "github.paths[0]"),
        (lambda d: d["runner_groups"][0].update(name="Small Group"), "runner_groups[0].name"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, key_path: str
) -> None:
    data = manager_config(tmp_path, "u0", "http://127.0.0.1:9", "redis://127.0.0.1:9/0")
    mutate(data)
    path = write(tmp_path, data)
    for command in (["dumpconfig"], ["status"], ["reconcile"]):
        assert cli.main(["--config", str(path), *command]) == 2
        err = capsys.readouterr().err
        assert key_path in err, err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_bad_config_through_the_console_script(tmp_path: Path) -> None:
    """The real entry point: exit 2, the key path on stderr, no traceback, nothing on stdout."""
    data = manager_config(tmp_path, "u0", "http://127.0.0.1:9", "redis://127.0.0.1:9/0")
    data["runner_groups"][0]["max_runners"] = -3
    path = write(tmp_path, data)
    script = shutil.which("github-runner-manager") or str(
        Path(sys.executable).with_name("github-runner-manager")
    )
    if not Path(script).exists():
        pytest.skip("console script not installed (pip install -e .)")
    result = subprocess.run(
        [script, "--config", str(path), "reconcile"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert result.returncode == 2
    assert "runner_groups[0].max_runners" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", str(tmp_path / "nope.yaml"), "status"]) == 2
    err = capsys.readouterr().err
    assert "no such config file" in err and "Traceback" not in err
    assert cli.main(["status"]) == 2
    assert "--config" in capsys.readouterr().err
    assert cli.main(["--config", str(tmp_path / "c.yaml"), "explode"]) == 2
    assert "explode" in capsys.readouterr().err
    assert cli.main(["--config", str(tmp_path / "c.yaml"), "--log-level", "loud", "status"]) == 2


def test_unreachable_redis_is_one_line_exit_1(
    emulator: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_world(emulator)
    path = write(
        tmp_path, memory_config(tmp_path, emulator.url, f"redis://127.0.0.1:{free_port()}/0")
    )
    for command in (["status"], ["reconcile"], ["flush", "--busy"]):
        assert cli.main(["--config", str(path), *command]) == 1
        err = capsys.readouterr().err
        assert err.startswith("github-runner-manager: error: Redis") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_rejected_token_exits_2(
    emulator: Any, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_world(emulator)
    data = memory_config(tmp_path, emulator.url, redis_url)
    data["github"]["token"] = "ghp_wrong"
    path = write(tmp_path, data)
    assert cli.main(["--config", str(path), "reconcile"]) == 2
    err = capsys.readouterr().err
    assert "GitHub" in err and "401" in err and "ghp_wrong" not in err and "Traceback" not in err
    data["github"].pop("token")
    path = write(tmp_path, data)
    assert cli.main(["--config", str(path), "reconcile"]) == 2
    assert "github.token" in capsys.readouterr().err


def test_reconcile_status_flush_against_the_emulator(
    emulator: Any, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_world(emulator)
    path = write(tmp_path, memory_config(tmp_path, emulator.url, redis_url))
    assert cli.main(["--config", str(path), "reconcile"]) == 0
    out = capsys.readouterr().out
    assert "+2 runners" in out  # min_idle 2 in small
    assert len(our_github_runners(emulator)) == 2
    assert cli.main(["--config", str(path), "status"]) == 0
    out = capsys.readouterr().out
    for word in (
        "small",
        "large",
        "idle",
        "busy",
        "creating",
        "queued jobs",
        "pickup p50",
        "pickup p95",
    ):
        assert word in out
    assert "GitHub calls spent" in out
    assert cli.main(["--config", str(path), "status", "--json"]) == 0
    stats = yaml.safe_load(capsys.readouterr().out)
    assert stats["groups"]["small"]["idle"] == 2 and stats["groups"]["small"]["github_requests"] > 0
    assert cli.main(["--config", str(path), "flush"]) == 0
    assert "2 runners removed" in capsys.readouterr().out
    assert our_github_runners(emulator) == []


def test_update_runner_bin(
    emulator: Any, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_world(emulator)
    path = write(tmp_path, memory_config(tmp_path, emulator.url, redis_url))
    assert cli.main(["--config", str(path), "update-runner-bin", "--check"]) == 0
    assert "update available" in capsys.readouterr().out
    assert cli.main(["--config", str(path), "update-runner-bin"]) == 0
    out = capsys.readouterr().out
    assert "sha256" in out and "actions-runner-linux-" in out
    assert cli.main(["--config", str(path), "update-runner-bin", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    emulator.control.set_runner_app(version="2.999.0", tamper_checksum=True)
    assert cli.main(["--config", str(path), "update-runner-bin"]) == 1
    err = capsys.readouterr().err
    assert "runner binary" in err and "sha256 mismatch" in err and "Traceback" not in err


def test_run_stops_cleanly_on_sigint(emulator: Any, redis_url: str, tmp_path: Path) -> None:
    setup_world(emulator)
    data = memory_config(tmp_path, emulator.url, redis_url)
    port = int(data["webhook"]["listen"].rpartition(":")[2])
    path = write(tmp_path, data)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "github_runner_manager.cli", "--config", str(path), "run"],
            stdout=out, stderr=subprocess.STDOUT, env=cli_env(),
        )  # fmt: skip
    try:
        import requests

        wait_for(
            lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok,
            30,
            what="webhook up",
        )
        wait_for(lambda: len(our_github_runners(emulator)) == 2, 30, what="min_idle runners")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "stopped" in text and "Traceback" not in text
    assert TOKEN not in text and SECRET not in text
    # runners survive a clean stop: they belong to the fleet
    assert len(our_github_runners(emulator)) == 2


def test_run_refuses_a_missing_webhook_secret(
    emulator: Any,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup_world(emulator)
    data = memory_config(tmp_path, emulator.url, redis_url)
    data["webhook"].pop("secret")
    path = write(tmp_path, data, "nosecret.yaml")
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET", raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    assert cli.main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err
    assert "webhook.secret" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is handler  # the command put the handlers back
