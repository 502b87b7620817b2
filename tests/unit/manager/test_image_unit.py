"""image.py without LXD: the cron schedule (jitter, validity, idempotence), the script's argument list,
and how a build's output and exit code become a result or an error (with tiny stand-in scripts)."""

from __future__ import annotations

import datetime
import itertools
import stat
import textwrap
from pathlib import Path

import pytest
from croniter import croniter
from hypothesis import given
from hypothesis import strategies as st

from github_runner_manager.image import (
    ImageBuildError,
    ImageBuildOptions,
    build_command,
    build_runner_image,
    cron_schedule,
    image_cache_key,
    remove_schedule,
    render_schedule,
    schedule_build_runner_image,
)

SHA = "a" * 64


def _fires(expression: str, hours: int = 72) -> list[datetime.datetime]:
    start = datetime.datetime(2025, 1, 1, 0, 0)
    it = croniter(expression, start)
    out = []
    while True:
        moment = it.get_next(datetime.datetime)
        if moment > start + datetime.timedelta(hours=hours):
            return out
        out.append(moment)


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("hours", [1, 2, 3, 4, 6, 8, 12])
def test_schedule_fires_every_interval_when_it_divides_a_day(hours: int) -> None:
    expression = cron_schedule(hours, "unit-0")
    fires = _fires(expression)
    gaps = {(b - a).total_seconds() / 3600 for a, b in itertools.pairwise(fires)}
    assert gaps == {hours}
    assert len(fires) == 72 // hours


def test_schedule_daily_and_multi_day() -> None:
    daily = _fires(cron_schedule(24, "unit-0"), hours=24 * 5)
    assert len(daily) == 5
    every_two_days = cron_schedule(48, "unit-0").split()
    assert every_two_days[2] == "*/2"


def test_schedule_gap_never_exceeds_interval_when_it_does_not_divide_a_day() -> None:
    fires = _fires(cron_schedule(5, "unit-0"), hours=24 * 3)
    gaps = [(b - a).total_seconds() / 3600 for a, b in itertools.pairwise(fires)]
    assert max(gaps) <= 5


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=31 * 24))
def test_schedule_is_valid_and_deterministic(hostname: str, hours: int) -> None:
    expression = cron_schedule(hours, hostname)
    assert croniter.is_valid(expression)
    assert expression == cron_schedule(hours, hostname)


def test_schedule_is_jittered_across_hosts() -> None:
    minutes = {cron_schedule(6, f"unit-{i}").split()[0] for i in range(40)}
    offsets = {cron_schedule(6, f"unit-{i}").split()[1] for i in range(40)}
    assert len(minutes) > 10 and len(offsets) > 1


@pytest.mark.parametrize("bad", [0, -1, 31 * 24 + 1, 1.5, True])
def test_schedule_rejects_bad_intervals(bad: object) -> None:
    with pytest.raises(ValueError, match="interval_hours"):
        cron_schedule(bad, "h")  # type: ignore[arg-type]


def test_schedule_file_is_valid_idempotent_and_removable(tmp_path: Path) -> None:
    path = tmp_path / "cron.d" / "github-runner-image"
    command = [
        "/opt/ghrm/bin/github-runner-manager",
        "build-image",
        "--config",
        "/etc/ghrm/config 100%.yaml",
    ]
    log = tmp_path / "logs" / "image build.log"
    env = {"http_proxy": "http://proxy.internal:3128"}
    written = schedule_build_runner_image(
        6, command, path=path, log=log, hostname="unit-0", env=env
    )
    assert written == path
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert text.endswith("\n")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "http_proxy=http://proxy.internal:3128" in lines
    job = next(line for line in lines if "=" not in line.split()[0])
    fields = job.split()
    assert croniter.is_valid(" ".join(fields[:5]))
    assert " ".join(fields[:5]) == cron_schedule(6, "unit-0")
    assert fields[5] == "root"
    assert r"100\%" in job and "%" not in job.replace(
        r"\%", ""
    )  # cron would cut the line at a bare %
    assert "'" in job and ">>" in job and "2>&1" in job

    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    schedule_build_runner_image(6, command, path=path, log=log, hostname="unit-0", env=env)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime)  # not rewritten

    schedule_build_runner_image(12, command, path=path, log=log, hostname="unit-0", env=env)
    assert path.read_text() != text
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary files left

    assert remove_schedule(path) is True
    assert not path.exists()
    assert remove_schedule(path) is False


def test_schedule_refuses_bad_env_and_empty_command(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NAME=value"):
        render_schedule(6, ["true"], env={"A\nB": "x"})
    with pytest.raises(ValueError, match="NAME=value"):
        render_schedule(6, ["true"], env={"A": "x\ny"})
    with pytest.raises(ValueError, match="empty"):
        render_schedule(6, [])


# --------------------------------------------------------------------------- command line


def test_build_command_maps_every_option() -> None:
    options = ImageBuildOptions(
        runner_sha256=SHA,
        runner_tarball=Path("/tmp/r.tar.gz"),
        runner_version="2.321.0",
        base="ubuntu:jammy",
        alias_prefix="gr",
        cache_dir=Path("/c"),
        output_dir=Path("/o"),
        log_file=Path("/l.log"),
        mirror="http://mirror.internal/ubuntu",
        dockerhub_mirror="https://hub.internal",
        extra_packages=("jq", "make"),
        vm=False,
        import_vm=True,
        lxd=False,
        use_cache=False,
        fail_after="import",
        script=Path("/s.sh"),
    )
    args = build_command(options)
    assert args[0] == "/s.sh"
    pairs = dict(zip(args[1::2], args[2::2]))
    assert pairs["--base"] == "ubuntu:jammy"
    assert pairs["--runner-tarball"] == "/tmp/r.tar.gz"
    assert pairs["--extra-packages"] == "jq,make"
    assert pairs["--fail-after"] == "import"
    for flag in ("--no-vm", "--import-vm", "--no-lxd", "--no-cache"):
        assert flag in args
    with pytest.raises(ValueError, match="exactly one"):
        build_command(ImageBuildOptions(runner_sha256=SHA))
    with pytest.raises(ValueError, match="exactly one"):
        build_command(
            ImageBuildOptions(
                runner_sha256=SHA, runner_tarball=Path("/x"), runner_url="http://127.0.0.1/x"
            )
        )


# --------------------------------------------------------------------------- running a build


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "build.sh"
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def _options(script: Path, **extra: object) -> ImageBuildOptions:
    return ImageBuildOptions(
        runner_sha256=SHA,
        runner_tarball=Path("/tmp/r.tar.gz"),
        script=script,
        **extra,  # type: ignore[arg-type]
    )


def test_result_is_parsed_and_progress_streamed(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """\
        echo "STEP bootstrap begin"
        echo "some apt noise"
        echo "STEP bootstrap done 1.0s"
        echo "proxy=$http_proxy"
        echo 'RESULT {"alias": "github-runner-debian-bookworm", "timestamped_alias": "github-runner-debian-bookworm-20250101000000", "cached": true, "seconds": 3.5, "vm_image": "/c/x.qcow2", "fingerprint": "abc", "previous_fingerprint": null, "rootfs": "/c/r.tar", "runner_version": "2.321.0", "cache_key": "k", "vm_metadata": null, "log": "/l"}'
        """,
    )
    lines: list[str] = []
    result = build_runner_image(
        _options(script, http_proxy="http://proxy.internal:3128"), on_line=lines.append
    )
    assert result.alias == "github-runner-debian-bookworm"
    assert result.timestamped_alias.endswith("20250101000000")  # type: ignore[union-attr]
    assert result.cached is True and result.seconds == 3.5
    assert result.vm_image == Path("/c/x.qcow2") and result.vm_metadata is None
    assert "proxy=http://proxy.internal:3128" in lines
    assert lines[0] == "STEP bootstrap begin"


def test_failure_names_step_and_meaning(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """\
        echo "STEP runner begin"
        echo "build-runner-image: ERROR: runner tarball sha256 mismatch: expected a, got b" >&2
        exit 5
        """,
    )
    with pytest.raises(ImageBuildError) as failure:
        build_runner_image(_options(script))
    assert failure.value.exit_code == 5
    assert failure.value.step == "runner"
    assert "sha256 mismatch" in str(failure.value) and "exit code 5" in str(failure.value)


def test_missing_result_line_is_a_failure(tmp_path: Path) -> None:
    script = _script(tmp_path, "echo done\n")
    with pytest.raises(ImageBuildError, match="exit code 0"):
        build_runner_image(_options(script))


def test_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    script = _script(
        tmp_path,
        f"""\
        echo "STEP bootstrap begin"
        sleep 300 &
        echo $! > {marker}
        wait
        """,
    )
    with pytest.raises(ImageBuildError, match="timed out") as failure:
        build_runner_image(_options(script, timeout=1.0))
    assert failure.value.exit_code is None and failure.value.step == "bootstrap"
    child = int(marker.read_text())
    assert _gone(child)


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for a parent that is not ours to reap it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in {"Z", "X"}


def test_cache_key_comes_from_the_script(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """\
        for a in "$@"; do [ "$a" = --print-cache-key ] && { echo "key-123"; exit 0; }; done
        exit 1
        """,
    )
    assert image_cache_key(_options(script)) == "key-123"
    failing = _script(tmp_path, "echo nope >&2; exit 1\n")
    with pytest.raises(ImageBuildError, match="nope"):
        image_cache_key(_options(failing))


def test_operator_template_overrides_the_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "cron-image-build.j2").write_text(
        "# ours\n{{ schedule }} {{ user }} {{ command }} >>{{ log }} 2>&1\n"
    )
    text = render_schedule(6, ["true"], hostname="h", templates_dir=tmp_path)
    assert text.startswith("# ours\n") and " root true >>" in text
    (tmp_path / "cron-image-build.j2").write_text("# no schedule line at all\n")
    with pytest.raises(ValueError, match="no valid schedule line"):
        render_schedule(6, ["true"], hostname="h", templates_dir=tmp_path)
