"""The supervised process the charm uses where systemd is not PID 1: real processes, real signals."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.parts import wait_for

from charm_service import Layout, SupervisedProcess


def pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def test_supervisor_restarts_its_command_and_stops_it(tmp_path: Path) -> None:
    layout = Layout.under(tmp_path)
    record = tmp_path / "pids"
    service = SupervisedProcess("demo", layout)
    script = f"echo $$ >> {record}; exec sleep 300"
    assert service.install(["sh", "-c", script], {"DEMO": "1"})
    assert not service.install(["sh", "-c", script], {"DEMO": "1"})  # same spec: no change
    service.start()
    try:
        supervisor = service.pid()
        assert supervisor is not None
        first = wait_for(lambda: pids(record), 10, what="the command started")
        assert isinstance(first, list)
        os.kill(first[0], signal.SIGKILL)  # the command dies: the supervisor starts it again
        wait_for(lambda: len(pids(record)) == 2, 15, what="the command restarted")
        assert service.pid() == supervisor
        service.start()  # already running: nothing happens
        assert service.pid() == supervisor and len(pids(record)) == 2
        assert "supervisor: demo exited" in layout.log_file("demo").read_text()
    finally:
        service.stop(timeout=20)
    assert not service.running()
    assert not any(alive(pid) for pid in pids(record))
    assert not layout.pidfile("demo").exists()
    service.remove()
    assert not service.spec_file.exists()


def test_a_pidfile_of_a_dead_or_reused_pid_is_not_running(tmp_path: Path) -> None:
    layout = Layout.under(tmp_path)
    layout.base_dir.mkdir(parents=True)
    service = SupervisedProcess("ghost", layout)
    layout.pidfile("ghost").write_text(f"{os.getpid()}:not-my-start-time\n")
    assert not service.running()
    layout.pidfile("ghost").write_text("999999999:\n")
    assert not service.running()
    service.stop()  # nothing to stop
