"""Campaign 6 -- secrets: after a full end-to-end run, no secret anywhere it should not be.

Two managers run with a distinctive GitHub token, webhook secret and cloud credential (an ``aws``
backend on a local ``moto_server``: listed every reconcile, so the credential is really used, and one
runner group creates instances there, so their user-data can be read back). Jobs run end to end on
local runner processes. Then neither secret -- nor a distinctive fragment of one -- appears in:

* the managers' logs and every other file the run wrote (runner work dirs and logs, caches, state);
  only the config files, which hold them by design (mode 0600), are exempt;
* ``/proc/*/cmdline`` of every process on the machine, and ``/proc/*/environ`` of the processes the
  test started and their descendants (managers, runner processes);
* a Redis dump (every key, ``DUMP`` of each, and its value read per type incl. streams);
* instance user-data (read back from the cloud) and the JIT configs handed to instances;
* CLI output (``status``, ``status --json``, ``dumpconfig``, ``reconcile``, ``flush``, and error paths:
  a config with the token misplaced, a token GitHub rejects).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.parts import free_port, unavailable, wait_for
from tests.reliability.harness import (
    CLOUD_SECRET,
    TIMEOUT,
    TOKEN,
    WEBHOOK_SECRET,
    Fleet,
    descendants,
    redis_dump,
    report,
    run_cli,
    settle,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

SECRETS = {"token": TOKEN, "webhook secret": WEBHOOK_SECRET, "cloud credential": CLOUD_SECRET}
AMI = "ami-1e749f67"  # one of moto's built-in images


def needles() -> dict[str, bytes]:
    """Each secret, and a distinctive fragment of it (a leak may be cut or wrapped)."""
    out = {}
    for name, value in SECRETS.items():
        out[name] = value.encode()
        out[f"{name} (fragment)"] = value[6:-4].encode()
        out[f"{name} (base64)"] = base64.b64encode(value.encode())[:-4]
    return out


def leaks(data: bytes, where: str) -> list[str]:
    return [f"{name} in {where}" for name, needle in needles().items() if needle in data]


@pytest.fixture
def moto(tmp_path: Path) -> Any:
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        found = shutil.which("moto_server")
        if found is None:
            unavailable("moto_server is missing (pip install 'moto[server]')")
        binary = Path(str(found))
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as reply:
            return reply.status == 200

    try:
        try:
            wait_for(
                lambda: process.poll() is None and ready(), 60, interval=0.1, what="moto_server"
            )
        except TimeoutError as exc:
            unavailable(f"moto_server did not start: {exc}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_no_secret_leaks_anywhere(fleet: Fleet, moto: str, tmp_path: Path) -> None:
    aws = {
        "region": "us-east-1",
        "endpoint_url": moto,
        "access_key_id": "AKIARELIABILITY00001",
        "secret_access_key": CLOUD_SECRET,
        "timeout": 10,
        "max_attempts": 2,
    }
    groups = [
        {
            "name": "small",
            "labels": ["small"],
            "backends": ["fake", "aws"],
            "min_idle": 1,
            "max_runners": 4,
            "cpu": 1,
            "memory": "1GiB",
            "paths": ["acme"],
        },
        {
            "name": "cloud",
            "labels": ["cloud"],
            "backend": "aws",
            "image": AMI,
            "min_idle": 1,
            "max_runners": 1,
            "cpu": 2,
            "memory": "4GiB",
            "paths": ["acme"],
        },
    ]
    for unit in ("u0", "u1"):
        manager = fleet.add(unit, runner_groups=groups)
        manager.data["backends"]["aws"] = aws
        manager.write()
    fleet.start()
    jobs = [fleet.queue_job(["echo job $RUNNER_NAME", "env | grep -c . "]) for _ in range(4)]
    done = fleet.wait_jobs_done(jobs, 120)
    problems = [
        f"job {j}: {d['conclusion']}" for j, d in done.items() if d["conclusion"] != "success"
    ]

    import boto3

    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto,
        aws_access_key_id="AKIARELIABILITY00001",
        aws_secret_access_key=CLOUD_SECRET,
    )

    def cloud_instances() -> list[str]:
        found = ec2.describe_instances()["Reservations"]
        return [
            i["InstanceId"]
            for r in found
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ]

    wait_for(cloud_instances, 60, what="a runner instance in the cloud")
    user_data = []
    for instance_id in cloud_instances():
        attr = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        value = attr.get("UserData", {}).get("Value", "")
        user_data.append(base64.b64decode(value) if value else b"")
    if not any(user_data):
        problems.append("no user-data could be read back from the cloud instances")
    for data in user_data:
        problems += leaks(data, "cloud instance user-data")
        if b"jit" not in data.lower():
            problems.append("cloud user-data holds no JIT config (is it the runner's user-data?)")

    # processes: every command line on the machine; the environment of ours and their children
    ours = descendants(os.getpid())
    for manager in fleet.managers:
        if manager.pid:
            ours |= {manager.pid} | descendants(manager.pid)
    for data in manager_instances(fleet):
        if data.get("pid"):
            ours |= {data["pid"]} | descendants(data["pid"])
    scanned = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        scanned += 1
        problems += leaks(cmdline, f"/proc/{entry.name}/cmdline ({cmdline[:80]!r})")
        if int(entry.name) in ours:
            try:
                problems += leaks((entry / "environ").read_bytes(), f"/proc/{entry.name}/environ")
            except OSError:
                pass

    # CLI output, including error paths
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    config = fleet.managers[0].config
    for args in (
        ("status",),
        ("status", "--json"),
        ("dumpconfig",),
        ("--log-level", "debug", "reconcile"),
        ("update-runner-bin", "--check"),
    ):
        outputs[" ".join(args)] = run_cli(config, *args)
    bad = yaml.safe_load(config.read_text())
    bad["github"]["token"] = [TOKEN]
    bad["webhook"]["secret"] = {"value": WEBHOOK_SECRET}
    bad["backends"]["aws"]["secret_access_key"] = [CLOUD_SECRET]
    misplaced = tmp_path / "config-misplaced.yaml"
    misplaced.write_text(yaml.safe_dump(bad))
    outputs["dumpconfig (secrets misplaced)"] = run_cli(misplaced, "dumpconfig")
    outputs["reconcile (secrets misplaced)"] = run_cli(misplaced, "reconcile")
    rejected = yaml.safe_load(config.read_text())
    rejected["github"]["token"] = TOKEN[:-3] + "xyz"
    wrong = tmp_path / "config-wrong-token.yaml"
    wrong.write_text(yaml.safe_dump(rejected))
    outputs["reconcile (token rejected)"] = run_cli(wrong, "--log-level", "debug", "reconcile")
    for name, result in outputs.items():
        problems += leaks((result.stdout + result.stderr).encode(), f"CLI `{name}` output")
    if outputs["dumpconfig"].returncode != 0 or "**********" not in outputs["dumpconfig"].stdout:
        problems.append(
            f"dumpconfig did not show redacted secrets: {outputs['dumpconfig'].stderr[-500:]}"
        )
    if outputs["dumpconfig (secrets misplaced)"].returncode != 2:
        problems.append(
            f"misplaced secrets not refused: {outputs['dumpconfig (secrets misplaced)']}"
        )

    # every file the run wrote, while runners are up (their work dirs go with them) and again at the end
    files = _scan_files(tmp_path, problems)

    # Redis, then stop everything and read every file the run wrote
    dump = redis_dump(_raw(fleet))
    problems += leaks(b"\n".join(dump), "the Redis dump")
    for manager in fleet.managers:
        assert manager.stop() == 0
    for manager in fleet.managers:
        flushed = run_cli(manager.config, "flush", "--busy")
        problems += leaks((flushed.stdout + flushed.stderr).encode(), "CLI `flush --busy` output")
    files += _scan_files(tmp_path, problems)
    modes = {str(m.config): oct(m.config.stat().st_mode & 0o777) for m in fleet.managers}
    report(
        "secrets",
        {
            "jobs": len(jobs),
            "processes_scanned": scanned,
            "own_processes": len(ours),
            "files_scanned": files,
            "redis_items": len(dump),
            "cli_outputs": len(outputs) + len(fleet.managers),
            "cloud_user_data": len(user_data),
            "problems": len(problems),
        },
    )
    problems += [
        f"config file {p} readable by others ({m})" for p, m in modes.items() if m != "0o600"
    ]
    settle(problems, fleet.tails())


def _scan_files(root: Path, problems: list[str]) -> int:
    """Look for secrets in every file under ``root`` but the config files; returns how many were read."""
    files = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.name.startswith("config"):
            continue
        files += 1
        try:
            problems += leaks(path.read_bytes(), str(path.relative_to(root)))
        except OSError:
            pass
    return files


def manager_instances(fleet: Fleet) -> list[dict[str, Any]]:
    return [data for manager in fleet.managers for data in manager.instances().values()]


def _raw(fleet: Fleet) -> Any:
    import redis as redis_lib

    return redis_lib.Redis.from_url(fleet.redis_url)
