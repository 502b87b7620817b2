"""The runner image builder against real mmdebstrap and LXD: launch, cache, failure, first boot.

Every test that builds uses its own alias prefix so it never moves the session image's alias, and
removes its images afterwards.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from github_emulator.testing import start_emulator
from github_runner_manager.backends.lxd import LXDBackend
from github_runner_manager.image import ImageBuildError, build_runner_image
from tests.functional.lxd.lxdtools import (
    BUILD_SCRIPT,
    IMAGE_CACHE,
    START_LXD,
    TEST_CACHE,
    LXDInfo,
    RunnerImage,
    alias_target,
    delete_images,
    image_options,
    image_properties,
    launch,
    lxc,
    lxc_exec,
    wait_ipv4,
)
from tests.parts import free_port, wait_for

pytestmark = pytest.mark.needs_lxd


def _unique_prefix(kind: str) -> str:
    return f"ghrm-t{kind}-{uuid.uuid4().hex[:6]}"


def _assert_runner_in(name: str, version: str) -> None:
    result = lxc_exec(name, "cat", "/opt/actions-runner/.runner-version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == version
    info = lxc_exec(name, "cat", "/etc/github-runner/image-info").stdout
    assert f"RUNNER_VERSION={version}" in info
    assert lxc_exec(name, "test", "-x", "/opt/actions-runner/run.sh").returncode == 0
    owner = lxc_exec(name, "stat", "-c", "%U", "/opt/actions-runner/run.sh").stdout.strip()
    assert owner == "runner"


def test_start_lxd_is_idempotent(lxd: LXDInfo) -> None:
    result = subprocess.run(
        [str(START_LXD)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "lxd already running" in result.stdout
    assert "firewall: nftables" in result.stdout
    assert str(lxd.interface) == "10.151.12.1/24"


def test_image_launches_with_ipv4_and_the_advertised_runner(
    runner_image: RunnerImage, launched: list[str]
) -> None:
    # The tarball came from the emulator's downloads endpoint (its sha256_checksum was checked).
    assert runner_image.app.source == "emulator"
    props = image_properties(runner_image.alias)
    assert props["cache_key"] == runner_image.cache_key
    assert props["runner_version"] == runner_image.app.version

    started = time.monotonic()
    name = launch(runner_image.alias, launched, tag="img")
    address = wait_ipv4(name, timeout=60)
    print(f"{name}: IPv4 {address} {time.monotonic() - started:.1f}s after launch")
    _assert_runner_in(name, runner_image.app.version)
    assert lxc_exec(name, "hostname").stdout.strip() == name
    for tool in ("curl", "git", "python3", "sudo", "ip"):
        assert lxc_exec(name, "sh", "-c", f"command -v {tool}").returncode == 0, tool
    # Without start-up data the first-boot unit runs nothing and the machine stays up.
    log = wait_for(
        lambda: lxc_exec(name, "cat", "/var/log/github-runner.log").stdout,
        timeout=60,
        what="first-boot log",
    )
    assert "nothing to run" in str(log)
    assert lxc("list", name, "-c", "s", "--format", "csv").stdout.strip() == "RUNNING"


def test_first_boot_runs_the_runner_and_powers_off(
    runner_image: RunnerImage, launched: list[str]
) -> None:
    # A JIT config the runner app cannot use: the app exits, the unit powers the machine off.
    name = launch(runner_image.alias, launched, "user.jitconfig=bm90LWEtcmVhbC1qaXQ=", tag="jit")
    wait_for(
        lambda: lxc("list", name, "-c", "s", "--format", "csv").stdout.strip() == "STOPPED",
        timeout=120,
        interval=0.5,
        what=f"{name} to power itself off",
    )
    # The manager then removes the husk at once, even while LXD is still finishing the stop.
    backend = LXDBackend({}, prefix="ghrmt-")
    backend.delete(name)
    assert lxc("info", name, check=False).returncode != 0
    backend.close()


def test_first_boot_runs_a_user_data_script(runner_image: RunnerImage, launched: list[str]) -> None:
    script = "#!/bin/sh\necho ran-as-$(id -un) > /root/user-data-ran\n"
    name = launch(
        runner_image.alias,
        launched,
        f"user.user-data={script}",
        "user.ghrm-no-poweroff=true",
        tag="ud",
    )
    content = wait_for(
        lambda: lxc_exec(name, "cat", "/root/user-data-ran").stdout.strip(),
        timeout=60,
        what="the user-data script's marker",
    )
    assert content == "ran-as-root"
    # The start script logs its decision after the user-data script has exited: wait for that line.
    log = wait_for(
        lambda: (
            (text := lxc_exec(name, "cat", "/var/log/github-runner.log").stdout)
            and "no-poweroff set" in text
            and text
        ),
        timeout=60,
        what="the start script's no-poweroff decision in its log",
    )
    assert "user-data script exited with 0" in log


@pytest.mark.slow
def test_clean_then_warm_build(
    lxd: LXDInfo, runner_image: RunnerImage, tmp_path: Path, launched: list[str]
) -> None:
    """From an empty cache, then again warm (runner fetched by URL from the emulator, VM image too).

    When the session image was itself built from scratch in this session (a fresh machine, as on CI),
    that build is the cold one and its cache is the warm one: the cold build is not paid twice.
    """
    prefix = _unique_prefix("clean")
    alias = f"{prefix}-debian-bookworm"
    app = runner_image.app
    session_build = runner_image.build
    try:
        if session_build is not None and not session_build.base_cached:
            cold, cache, log = session_build, IMAGE_CACHE, TEST_CACHE / "build.log"
            print("image build: the session image was built from scratch; it is the cold build")
        else:
            cache, log = tmp_path / "cache", tmp_path / "build.log"
            cold = build_runner_image(
                image_options(app, alias_prefix=prefix, cache_dir=cache, log_file=log, vm=True)
            )
        assert not cold.cached and not cold.base_cached
        with start_emulator(host="127.0.0.1", port=0, orgs=["acme"], tokens=["t0k"]) as gh:
            listing = requests.get(
                f"{gh.url}/orgs/acme/actions/runners/downloads",
                headers={"Authorization": "token t0k"},
                timeout=10,
            ).json()
            entry = next(e for e in listing if e["os"] == "linux" and e["architecture"] == "x64")
            warm = build_runner_image(
                image_options(
                    app,
                    runner_tarball=None,
                    runner_url=entry["download_url"],  # downloaded and sha256-checked by the script
                    runner_sha256=entry["sha256_checksum"],
                    runner_version=None,  # read from the file name
                    alias_prefix=prefix,
                    cache_dir=cache,
                    log_file=log,
                    vm=True,
                    import_vm=True,
                )
            )
        print(f"image build: cold {cold.seconds:.1f}s, warm {warm.seconds:.1f}s")
        assert not cold.cached
        assert warm.cached
        assert warm.seconds < cold.seconds / 2
        assert cold.runner_version == warm.runner_version == app.version
        assert cold.cache_key == warm.cache_key == runner_image.cache_key
        assert alias_target(alias) == warm.fingerprint
        if cold.alias == alias:
            assert warm.previous_fingerprint == cold.fingerprint

        # (b) the VM image: qcow2, with LXD metadata, holding the runner and the first-boot unit.
        assert warm.vm_image is not None and warm.vm_metadata is not None
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(warm.vm_image)],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        assert info["format"] == "qcow2"
        raw = tmp_path / "vm.raw"
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(warm.vm_image), str(raw)],
            check=True,
            timeout=300,
        )
        version = subprocess.run(
            ["debugfs", "-R", "cat /opt/actions-runner/.runner-version", str(raw)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        assert version == app.version
        unit = subprocess.run(
            ["debugfs", "-R", "cat /etc/systemd/system/github-runner.service", str(raw)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert "ExecStart=/usr/local/bin/github-runner-start" in unit
        with tarfile.open(warm.vm_metadata) as tar:
            metadata = tar.extractfile("metadata.yaml").read().decode()  # type: ignore[union-attr]
        assert "type: virtual-machine" in metadata and "architecture: x86_64" in metadata
        vm_image = json.loads(lxc("query", f"/1.0/images/aliases/{alias}-vm").stdout)
        vm_info = json.loads(lxc("query", f"/1.0/images/{vm_image['target']}").stdout)
        assert vm_info["type"] == "virtual-machine"  # LXD accepts it; this host cannot boot it

        # The image (the cold build's root filesystem, from the cache) launches and gets an address.
        name = launch(alias, launched, tag="clean")
        wait_ipv4(name)
        _assert_runner_in(name, app.version)
    finally:
        delete_images(prefix)


def test_failed_build_leaves_the_previous_alias_working(
    runner_image: RunnerImage, tmp_path: Path, launched: list[str]
) -> None:
    prefix = _unique_prefix("fail")
    alias = f"{prefix}-debian-bookworm"
    app = runner_image.app
    try:
        good = build_runner_image(image_options(app, alias_prefix=prefix))
        assert alias_target(alias) == good.fingerprint
        # "import": the new image is in LXD but the alias is not moved yet;
        # "customize": injected where the warm cache skips the step.
        for step in ("import", "customize"):
            with pytest.raises(ImageBuildError) as failure:
                build_runner_image(image_options(app, alias_prefix=prefix, fail_after=step))
            assert failure.value.exit_code == 70
            assert "INJECTED FAILURE" in failure.value.output
            assert alias_target(alias) == good.fingerprint
        # The half-imported image was removed again: only the good build's images carry the prefix.
        aliases = json.loads(lxc("query", "/1.0/images/aliases?recursion=1").stdout)
        targets = {a["target"] for a in aliases if a["name"].startswith(prefix)}
        assert targets == {good.fingerprint}

        name = launch(alias, launched, tag="fail")
        wait_ipv4(name)
        _assert_runner_in(name, app.version)
    finally:
        delete_images(prefix)


def test_bad_runner_checksum_is_refused(runner_image: RunnerImage, tmp_path: Path) -> None:
    prefix = _unique_prefix("sum")
    options = image_options(runner_image.app, alias_prefix=prefix, runner_sha256="0" * 64)
    with pytest.raises(ImageBuildError) as failure:
        build_runner_image(options)
    assert failure.value.exit_code == 5
    assert "sha256 mismatch" in str(failure.value)
    assert alias_target(f"{prefix}-debian-bookworm") is None


def test_unreachable_ubuntu_mirror_is_a_clear_error(
    runner_image: RunnerImage, tmp_path: Path
) -> None:
    # A closed loopback port stands in for "no Ubuntu mirror reachable from here".
    options = image_options(
        runner_image.app,
        base="ubuntu:jammy",
        alias_prefix=_unique_prefix("ubu"),
        cache_dir=tmp_path / "cache",
        log_file=tmp_path / "build.log",
        mirror=f"http://127.0.0.1:{free_port()}/ubuntu",
    )
    with pytest.raises(ImageBuildError) as failure:
        build_runner_image(options)
    assert failure.value.exit_code == 4
    assert "no Ubuntu mirror is reachable" in str(failure.value)
    assert "mirror" in (tmp_path / "build.log").read_text()


def test_script_usage_and_cache_key(runner_image: RunnerImage) -> None:
    helped = subprocess.run(
        [str(BUILD_SCRIPT), "--help"], capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0
    for option in (
        "--runner-tarball",
        "--cache-dir",
        "--fail-after",
        "--no-vm",
        "--dockerhub-mirror",
    ):
        assert option in helped.stdout
    unknown = subprocess.run(
        [str(BUILD_SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30
    )
    assert unknown.returncode == 1
    app = runner_image.app
    base_args = [
        str(BUILD_SCRIPT),
        "--runner-tarball",
        str(app.path),
        "--runner-version",
        app.version,
    ]
    bad_step = subprocess.run(
        [*base_args, "--runner-sha256", app.sha256, "--fail-after", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad_step.returncode == 1 and "not a step" in bad_step.stderr

    def key(*extra: str) -> str:
        return subprocess.run(
            [*base_args, "--print-cache-key", *extra],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()

    same = key("--runner-sha256", app.sha256, "--alias-prefix", "ghrm-test")
    assert same == runner_image.cache_key
    assert key("--runner-sha256", "1" * 64) != same
    assert (
        key("--runner-sha256", app.sha256, "--dockerhub-mirror", "http://10.151.12.1:5000") != same
    )


def test_proxies_and_dockerhub_mirror_are_written_into_the_image(
    runner_image: RunnerImage, tmp_path: Path
) -> None:
    """Proxy and registry-mirror settings end up in the image (checked in the rootfs, no launch).

    The base layer is cached by the session image, so nothing is fetched through the (absent) proxy.
    """
    proxy = "http://10.151.12.1:3128"
    mirror = "http://10.151.12.1:5000"
    result = build_runner_image(
        image_options(
            runner_image.app,
            alias_prefix=_unique_prefix("proxy"),
            lxd=False,
            http_proxy=proxy,
            https_proxy=proxy,
            no_proxy="localhost,127.0.0.1,10.151.12.1",
            dockerhub_mirror=mirror,
        )
    )
    assert result.alias is None and result.fingerprint is None  # --no-lxd: nothing imported
    assert result.base_cached  # the final layer too, when an earlier run made it
    assert result.cache_key != runner_image.cache_key
    assert result.rootfs is not None

    def read(member: str) -> str:
        with tarfile.open(result.rootfs) as tar:  # type: ignore[arg-type]
            return tar.extractfile(member).read().decode()  # type: ignore[union-attr]

    assert json.loads(read("./etc/docker/daemon.json")) == {"registry-mirrors": [mirror]}
    environment = read("./etc/environment")
    assert f"http_proxy={proxy}" in environment and f"HTTPS_PROXY={proxy}" in environment
    assert "no_proxy=localhost,127.0.0.1,10.151.12.1" in environment
    assert f"http_proxy={proxy}" in read("./opt/actions-runner/.env")
    assert f'Acquire::http::Proxy "{proxy}";' in read("./etc/apt/apt.conf.d/90ghrm-proxy")
