"""The fake backend's local mode against real processes: lifecycle, crash survival, the contract.

Each instance is a real ``sh run.sh --jitconfig …`` process in its own session; these tests use a tiny
runner app of their own (the emulator's app is exercised end to end by the manager tests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from github_runner_manager.backends.base import (
    TAG_GROUP,
    TAG_OWNER,
    TAG_PREFIX,
    TAG_UNIT,
    BackendConfigError,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
)
from github_runner_manager.backends.fake import FakeBackend
from tests.parts import wait_for

RUN_SH = textwrap.dedent(
    """\
    #!/bin/sh
    # a stand-in runner: record who we are, start a grandchild, then wait or exit
    echo "$RUNNER_NAME $ACTIONS_RUNNER_INPUT_JITCONFIG" > "$RUNNER_WORKDIR/started"
    sleep 300 &
    echo $! > "$RUNNER_WORKDIR/grandchild"
    if [ "$ACTIONS_RUNNER_INPUT_JITCONFIG" = "exit-now" ]; then exit 0; fi
    wait
    """
)


def spec(name: str, jit: str = "jit-1", unit: str = "u0") -> InstanceSpec:
    return InstanceSpec(
        name=name,
        group="small",
        image="img",
        cpu=1,
        memory=1 << 30,
        disk=1 << 30,
        user_data="",
        jit_config=jit,
        tags={TAG_PREFIX: "ghr", TAG_UNIT: unit, TAG_GROUP: "small", TAG_OWNER: "acme"},
    )


@pytest.fixture
def app_tarball(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "runner"
    root.mkdir(parents=True)
    (root / "run.sh").write_text(RUN_SH)
    tarball = tmp_path / "actions-runner-linux-x64-2.999.0.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(root / "run.sh", arcname="run.sh")
    return tarball


@pytest.fixture
def backend(tmp_path: Path, app_tarball: Path):
    made: list[FakeBackend] = []

    def make(**settings: object) -> FakeBackend:
        base = {
            "mode": "local",
            "runner_tarball": str(app_tarball),
            "state_file": str(tmp_path / "state.json"),
            "work_dir": str(tmp_path / "work"),
        }
        base.update(settings)
        b = FakeBackend(base, prefix="ghr")
        made.append(b)
        return b

    yield make
    for b in made:
        b.remove_all()


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def test_instance_is_a_process_and_delete_kills_its_group(backend, tmp_path: Path) -> None:
    b = backend()
    inst = b.create(spec("ghr-small-aaaaaa", jit="wait"))
    assert inst.state is InstanceState.RUNNING
    workdir = tmp_path / "work" / "instances" / "ghr-small-aaaaaa"
    wait_for(
        lambda: (workdir / "grandchild").exists() and (workdir / "grandchild").read_text().strip(),
        10, what="runner started",
    )  # fmt: skip
    assert (workdir / "started").read_text().split() == ["ghr-small-aaaaaa", "wait"]
    # the JIT config reaches the runner, but not through its arguments (visible in `ps`)
    assert b"wait" not in Path(f"/proc/{inst.extra['pid']}/cmdline").read_bytes()
    grandchild = int((workdir / "grandchild").read_text())
    assert _pid_alive(inst.extra["pid"]) and _pid_alive(grandchild)
    b.delete("ghr-small-aaaaaa")
    wait_for(lambda: not _pid_alive(grandchild), 5, what="grandchild killed")
    assert not _pid_alive(inst.extra["pid"])
    with pytest.raises(InstanceNotFound):
        b.get("ghr-small-aaaaaa")
    b.delete("ghr-small-aaaaaa")


def test_exited_process_is_stopped(backend) -> None:
    b = backend()
    b.create(spec("ghr-small-bbbbbb", jit="exit-now"))
    wait_for(
        lambda: b.get("ghr-small-bbbbbb").state is InstanceState.STOPPED, 10, what="runner exit"
    )
    assert [i.state for i in b.list()] == [InstanceState.STOPPED]
    b.delete("ghr-small-bbbbbb")
    assert b.list() == []


def test_runner_dir_setting_and_missing_app(backend, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "run.sh").write_text(RUN_SH)
    b = backend(runner_dir=str(app), runner_tarball=None)
    assert b.create(spec("ghr-small-cccccc", jit="wait")).state is InstanceState.RUNNING
    empty = backend(runner_tarball=None, state_file=str(tmp_path / "other.json"))
    with pytest.raises(BackendConfigError, match="runner"):
        empty.create(spec("ghr-small-dddddd"))
    assert empty.list() == []


def test_tarball_from_the_managers_cache(backend, app_tarball: Path) -> None:
    b = backend(runner_tarball=None)
    b.use_runner_binary(lambda: app_tarball)
    assert b.create(spec("ghr-small-eeeeee", jit="wait")).state is InstanceState.RUNNING


CREATOR = textwrap.dedent(
    """\
    import sys, threading, time
    from github_runner_manager.backends.fake import FakeBackend
    from github_runner_manager.backends.base import InstanceSpec
    settings = {"mode": "local", "runner_tarball": sys.argv[1], "state_file": sys.argv[2],
                "work_dir": sys.argv[3], "create_latency": sys.argv[5]}
    b = FakeBackend(settings, prefix="ghr")
    tags = {"ghrm-prefix": "ghr", "ghrm-unit": "u0", "ghrm-group": "small", "ghrm-owner": "acme"}
    b.create(InstanceSpec(name=sys.argv[4], group="small", image="i", cpu=1, memory=1, disk=1,
                          user_data="", jit_config="wait", tags=tags))
    print("created", flush=True)
    threading.Thread(target=b.create, args=(InstanceSpec(name=sys.argv[4] + "x", group="small",
        image="i", cpu=1, memory=1, disk=1, user_data="", jit_config="wait", tags=tags),)).start()
    time.sleep(0.2)
    print("pending", flush=True)
    time.sleep(300)
    """
)


def test_instances_survive_a_killed_manager(backend, tmp_path: Path, app_tarball: Path) -> None:
    """A SIGKILLed creator leaves its running instance (found by the next process) and an ERROR husk."""
    state = tmp_path / "state.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path("src").resolve()), *sys.path]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CREATOR,
            str(app_tarball),
            str(state),
            str(tmp_path / "work"),
            "ghr-small-ffffff",
            "2s",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "created"
        assert proc.stdout.readline().strip() == "pending"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    b = backend()
    states = {i.name: i for i in b.list()}
    assert states["ghr-small-ffffff"].state is InstanceState.RUNNING
    assert states["ghr-small-ffffffx"].state is InstanceState.ERROR  # its creator died mid-create
    pid = states["ghr-small-ffffff"].extra["pid"]
    assert json.loads(state.read_text())["ghr-small-ffffff"]["pid"] == pid
    assert b.remove_all() == 2
    wait_for(lambda: not _pid_alive(pid), 5, what="orphaned runner killed")
    assert b.list() == []


def test_capacity_counts_local_instances(backend) -> None:
    from github_runner_manager.backends.base import CapacityError

    b = backend(capacity=1)
    b.create(spec("ghr-small-gggggg", jit="wait"))
    with pytest.raises(CapacityError):
        b.create(spec("ghr-small-hhhhhh", jit="wait"))
