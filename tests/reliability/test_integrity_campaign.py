"""Campaign 8 -- integrity: a tampered runner tarball or image is refused and the old one kept.

* **Runner tarball**: the emulator offers a newer runner whose advertised sha256 is wrong
  (``set_runner_app(tamper_checksum=True)``): ``update-runner-bin`` fails with a checksum error, the
  cached binary (tarball bytes and metadata) is unchanged, no partial file is left, and the service keeps
  starting runners from the old, verified binary (a job prints the version it ran with). An update
  SIGKILLed mid-download leaves the cache as it was too, and the next update succeeds cleanly.
* **Runner image**: with LXD available, a build whose runner tarball fails its sha256 check, and builds
  failing on purpose at each step up to the import (the script's ``--fail-after``), leave the image
  alias on the previous image. Without LXD (or without a cached base image to alias), the same checks
  run against ``image.py``'s error handling without an alias, and the test says so in its report.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.parts import wait_for
from tests.reliability.harness import TIMEOUT, Fleet, cli_env, report, run_cli, settle

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


def _cache(manager: Any) -> Path:
    return Path(manager.data["state_dir"]) / "runner-binary"


def _snapshot(directory: Path) -> dict[str, str]:
    """File name -> sha256 of every file in the cache (the lock file aside)."""
    out = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != ".runner-binary.lock":
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_tampered_runner_tarball_is_refused_and_the_old_one_kept(fleet: Fleet) -> None:
    manager = fleet.add("u0")
    problems: list[str] = []
    first = run_cli(manager.config, "update-runner-bin")
    assert first.returncode == 0, first.stderr
    cache = _cache(manager)
    good = _snapshot(cache)
    meta = json.loads((cache / "runner-binary.json").read_text())
    assert meta["version"] == "2.321.0", meta

    # a newer runner whose checksum does not match its bytes
    fleet.emulator.control.set_runner_app(version="2.322.0", tamper_checksum=True)
    tampered = run_cli(manager.config, "update-runner-bin")
    if tampered.returncode != 1 or "sha256" not in tampered.stderr:
        problems.append(
            f"tampered tarball not refused: exit {tampered.returncode}: {tampered.stderr[-800:]}"
        )
    if _snapshot(cache) != good:
        problems.append(f"cache changed by a refused update: {good} -> {_snapshot(cache)}")

    # the service keeps using the verified binary
    manager.start()
    job = fleet.queue_job(['cat "$RUNNER_WORKDIR/.runner-version"'])
    done = fleet.wait_jobs_done([job], 90)[job]
    output = " ".join(str(s.get("output") or "") for s in done["steps"])
    if done["conclusion"] != "success" or "2.321.0" not in output:
        problems.append(
            f"job did not run on the old verified runner: {done['conclusion']} {output!r}"
        )
    assert manager.stop() == 0

    # an update killed mid-download keeps the cache as it was
    fleet.emulator.control.set_runner_app(version="2.323.0", tamper_checksum=False)
    fleet.emulator.control.fault(route="/_emulator/runner-app/*", hang=True, hang_seconds=60)
    updater = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "github_runner_manager.cli",
            "--config",
            str(manager.config),
            "update-runner-bin",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        start_new_session=True,
    )
    wait_for(
        lambda: any(f["hits"] for f in fleet.emulator.control._call("GET", "faults")),
        30,
        what="the download in flight",
    )
    os.killpg(updater.pid, signal.SIGKILL)
    updater.wait(10)
    fleet.emulator.control.clear_faults()
    killed = _snapshot(cache)
    partial = sorted(n for n in killed if n not in good)
    if {n: h for n, h in killed.items() if n in good} != good:
        problems.append(f"cache changed by a killed update: {good} -> {killed}")
    final = run_cli(manager.config, "update-runner-bin")
    if final.returncode != 0:
        problems.append(f"update after the killed one failed: {final.stderr[-800:]}")
    after = _snapshot(cache)
    meta = json.loads((cache / "runner-binary.json").read_text())
    expected = {"runner-binary.json", "actions-runner-linux-x64-2.323.0.tar.gz"}
    if meta["version"] != "2.323.0" or set(after) != expected:
        problems.append(
            f"after a clean update the cache holds {sorted(after)} (metadata {meta['version']})"
        )
    if set(after) - expected:
        problems.append(
            f"partial downloads left in the runner cache: {sorted(set(after) - expected)}"
        )
    report(
        "integrity-runner-binary",
        {
            "tampered_refused": tampered.returncode == 1,
            "partial_after_kill": partial,
            "problems": len(problems),
        },
    )
    settle(problems)


# ----------------------------------------------------------------------------------- runner image
def _lxd_ready() -> bool:
    try:
        result = subprocess.run(
            ["lxc", "query", "/1.0"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and '"api_status"' in result.stdout


def _lxc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["lxc", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _alias_target(alias: str) -> str | None:
    result = _lxc("query", f"/1.0/images/aliases/{alias}")
    return json.loads(result.stdout)["target"] if result.returncode == 0 else None


def _tiny_image(directory: Path, marker: str) -> str:
    """Import a minimal (unbootable) image unique to this test; returns its fingerprint."""
    import io
    import tarfile
    import time as time_

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in (
            (
                "metadata.yaml",
                f"architecture: x86_64\ncreation_date: {int(time_.time())}\nproperties:\n  description: {marker}\n",
            ),
            ("rootfs/etc/marker", marker + "\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    path = directory / "old-image.tar.gz"
    path.write_bytes(raw.getvalue())
    result = _lxc("image", "import", str(path))
    assert result.returncode == 0, result.stderr
    return hashlib.sha256(raw.getvalue()).hexdigest()


def _options(
    tarball: Path,
    sha256: str,
    version: str,
    prefix: str,
    tmp: Path,
    cache: Path,
    lxd: bool,
    **overrides: Any,
) -> Any:
    from github_runner_manager.image import ImageBuildOptions

    values: dict[str, Any] = {
        "runner_tarball": tarball,
        "runner_sha256": sha256,
        "runner_version": version,
        "alias_prefix": prefix,
        "vm": False,
        "lxd": lxd,
        "log_file": tmp / "build.log",
        "cache_dir": cache,
        "output_dir": tmp / "out",
        "timeout": 1800.0,
    }
    values.update(overrides)
    return ImageBuildOptions(**values)


def test_failed_or_tampered_image_build_keeps_the_old_alias(tmp_path: Path) -> None:
    import uuid

    from github_emulator.runner_app import build_tarball
    from github_runner_manager.image import ImageBuildError, build_runner_image, image_cache_key
    from tests.reliability.harness import FULL

    if os.geteuid() != 0:
        from tests.parts import unavailable

        unavailable("the image builder runs as root")
    version = "2.321.0"
    tarball = tmp_path / f"actions-runner-linux-x64-{version}.tar.gz"
    tarball.write_bytes(build_tarball(version))
    sha256 = hashlib.sha256(tarball.read_bytes()).hexdigest()
    lxd = _lxd_ready()
    prefix = f"ghrm-rel-{uuid.uuid4().hex[:6]}"
    alias = f"{prefix}-debian-bookworm"
    shared_cache = (
        Path(os.environ.get("GHRM_TEST_CACHE", "/var/cache/github-runner-tests")) / "image-cache"
    )
    warm = False  # the LXD tests' build cache holds the root filesystem for these inputs
    if lxd:
        try:
            key = image_cache_key(
                _options(tarball, sha256, version, prefix, tmp_path, shared_cache, lxd)
            )
            warm = (shared_cache / "rootfs" / f"{key}.tar").exists()
        except ImageBuildError:
            warm = False
    # Short form: failures before anything is built, plus after the import when the cache is warm
    # (the import is then the only real work). Full form: after every step up to the import.
    steps = ["preflight", "runner"] + (["import"] if warm else [])
    if FULL and lxd:
        steps = ["preflight", "runner", "customize", "pack", "import"]
    cache = shared_cache if (warm or (FULL and lxd)) else tmp_path / "cache"
    old = None
    problems: list[str] = []
    outcomes: dict[str, Any] = {}

    def options(**overrides: Any) -> Any:
        return _options(tarball, sha256, version, prefix, tmp_path, cache, lxd, **overrides)

    try:
        if lxd:
            old = _tiny_image(tmp_path, prefix)
            created = _lxc("image", "alias", "create", alias, old)
            assert created.returncode == 0, created.stderr
        cases = [("tampered tarball", {"runner_sha256": "0" * 64}, 5)]
        cases += [(f"fail after {s}", {"fail_after": s}, 70) for s in steps]
        for name, overrides, code in cases:
            try:
                build_runner_image(options(**overrides))
                problems.append(f"{name}: the build succeeded")
            except ImageBuildError as exc:
                outcomes[name] = exc.exit_code
                if exc.exit_code != code:
                    problems.append(
                        f"{name}: exit {exc.exit_code}, expected {code}: {exc} {exc.output[-600:]}"
                    )
            if lxd and _alias_target(alias) != old:
                problems.append(f"{name}: the alias moved to {_alias_target(alias)} (was {old})")
        if lxd:
            images = json.loads(_lxc("query", "/1.0/images/aliases?recursion=1").stdout)
            stray = {a["target"] for a in images if a["name"].startswith(prefix)} - {old}
            if stray:
                problems.append(f"images left by failed builds: {stray}")
    finally:
        if lxd:
            for entry in json.loads(
                _lxc("query", "/1.0/images/aliases?recursion=1").stdout or "[]"
            ):
                if entry["name"].startswith(prefix):
                    _lxc("image", "delete", entry["target"])
            if old:
                _lxc("image", "delete", old)
    report(
        "integrity-image",
        {
            "mode": "lxd" if lxd else "no-lxd (image.py error paths only; no alias)",
            "warm_cache": warm,
            "builds_refused": outcomes,
            "problems": len(problems),
        },
    )
    settle(problems)
