"""templates.py and templates/*.j2: context, operator overrides, no token in output, StrictUndefined,
and the rendered start script really runs the runner once (with a fake run.sh) and powers off."""

from __future__ import annotations

import getpass
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from github_runner_manager.config import REDACTED, ManagerConfig, parse_config
from github_runner_manager.labels import Sizing
from github_runner_manager.templates import (
    INSTALLED_TEMPLATES,
    REPO_TEMPLATES,
    build_context,
    default_template_dirs,
    render,
    render_start_script,
    render_user_data,
)
from github_runner_manager.units import GIB

TOKEN = "ghp_NeverInUserData0123456789abcdef"
HOOK_SECRET = "hook-secret-never-rendered"
CLOUD_PASSWORD = "cloud-password-never-rendered"
JIT = "eyJydW5uZXIiOiJqaXQtY29uZmlnLWZvci10ZXN0In0="
ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def config(**extra: Any) -> ManagerConfig:
    data: dict[str, Any] = {
        "github": {"paths": ["acme", "acme-labs/app"], "token": TOKEN},
        "webhook": {"secret": HOOK_SECRET},
        "denylist": ["10.0.0.0/8", "fd00::/8"],
        "runner_groups": [
            {"name": "large", "labels": ["large"], "backends": ["openstack", "lxd"], "cpu": 8}
        ],
        "backends": {"openstack": {"cloud": "mycloud", "password": CLOUD_PASSWORD}},
    }
    data.update(extra)
    return parse_config(data)


def context(cfg: ManagerConfig | None = None, **kw: Any) -> dict[str, Any]:
    cfg = cfg or config()
    args: dict[str, Any] = {
        "runner_name": "ghr-large-x1y2",
        "group": cfg.runner_groups[0],
        "path": cfg.github.paths[1],
        "jit_config": JIT,
        "labels": ["self-hosted", "large", "mem=16000"],
        "runson": {"mem": "16000"},
        "info": "job 42 of acme-labs/app",
        "sizing": Sizing(cpu=4, memory=16 * GIB, disk=20 * GIB),
    }
    args.update(kw)
    return build_context(cfg, **args)


def test_default_templates_are_found() -> None:
    dirs = default_template_dirs()
    assert REPO_TEMPLATES in dirs or INSTALLED_TEMPLATES in dirs
    for name in ("user-data.j2", "start-runner.sh.j2"):
        assert any((d / name).is_file() for d in dirs)


def test_context_variables() -> None:
    ctx = context()
    assert set(ctx) == {"CONFIG", "RUN", "RUNSON", "SETTINGS", "JIT_CONFIG", "DENYLIST"}
    assert ctx["RUN"] == {
        "RUNNER_NAME": "ghr-large-x1y2",
        "REPO_URL": "https://github.com/acme-labs/app",
        "REPO": "acme-labs/app",
        "LABELS": "self-hosted,large,mem=16000",
        "INFO": "job 42 of acme-labs/app",
    }
    assert ctx["RUNSON"] == {"mem": "16000"}
    assert ctx["SETTINGS"]["backend"] == "openstack"
    assert ctx["SETTINGS"]["backend_settings"] == {"cloud": "mycloud", "password": REDACTED}
    assert (ctx["SETTINGS"]["cpu"], ctx["SETTINGS"]["memory"]) == (4, 16 * GIB)
    assert ctx["SETTINGS"]["group"]["name"] == "large"
    assert ctx["DENYLIST"] == ["10.0.0.0/8", "fd00::/8"]
    assert ctx["CONFIG"]["github"]["token"] == REDACTED
    assert ctx["JIT_CONFIG"] == JIT
    org = context(path=config().github.paths[0])
    assert org["RUN"]["REPO_URL"] == "https://github.com/acme" and org["RUN"]["REPO"] == ""


def test_user_data_is_cloud_config_with_the_jit_config_only() -> None:
    text = render_user_data(context())
    assert text.startswith("#cloud-config\n")
    for secret in (TOKEN, HOOK_SECRET, CLOUD_PASSWORD):
        assert secret not in text
    data = yaml.safe_load(text)
    files = {f["path"]: f for f in data["write_files"]}
    jit = files["/etc/github-runner/jitconfig"]
    assert jit["content"] == JIT
    assert jit["permissions"] == "0600" and jit["owner"].startswith("runner")
    script = files["/usr/local/bin/start-runner.sh"]["content"]
    assert script == render_start_script(context())
    assert JIT not in script  # the script reads the JIT config at run time
    assert (
        "ExecStart=/usr/local/bin/start-runner.sh"
        in files["/etc/systemd/system/github-runner.service"]["content"]
    )
    assert ["systemctl", "start", "--no-block", "github-runner.service"] in data["runcmd"]


def test_start_script_shape() -> None:
    text = render_start_script(context())
    assert text.startswith("#!/bin/sh\n")
    assert 'RUNNER_DIR="${RUNNER_DIR:-/opt/actions-runner}"' in text
    assert '"$RUNNER_DIR/run.sh" --jitconfig "$JIT"' in text
    assert "curl -fsS --max-time 10 --unix-socket /dev/lxd/sock" in text
    assert "http://lxd/1.0/config/user.jitconfig" in text
    assert "/etc/github-runner/jitconfig" in text
    assert "ip daddr { 10.0.0.0/8 } drop" in text and "ip6 daddr { fd00::/8 } drop" in text
    no_denylist = render_start_script(context(config(denylist=[])))
    assert "nft" not in no_denylist


def test_operator_override_wins_per_file(tmp_path: Path) -> None:
    (tmp_path / "user-data.j2").write_text(
        "#cloud-config\n# custom for {{ RUN.RUNNER_NAME }} size {{ RUNSON.mem }} {{ SETTINGS.cpu }}\n"
        "{% include 'start-runner.sh.j2' %}"
    )
    cfg = config(templates_dir=str(tmp_path))
    ctx = context(cfg)
    text = render_user_data(ctx)  # templates_dir taken from CONFIG
    assert text.startswith("#cloud-config\n# custom for ghr-large-x1y2 size 16000 4\n")
    assert "#!/bin/sh" in text  # the start script not overridden: the default is used
    # explicit templates_dir argument; a template only the operator has
    (tmp_path / "instance-spec.yaml.j2").write_text(
        "name: {{ RUN.RUNNER_NAME }}\nflavor: {{ SETTINGS.backend_settings.cloud }}\n"
    )
    assert (
        render("instance-spec.yaml", context(), templates_dir=tmp_path)
        == "name: ghr-large-x1y2\nflavor: mycloud\n"
    )
    with pytest.raises(jinja2.TemplateNotFound):
        render("instance-spec.yaml", context())


def test_strict_undefined(tmp_path: Path) -> None:
    (tmp_path / "bad.j2").write_text("{{ RUN.NOT_THERE }}")
    with pytest.raises(jinja2.UndefinedError):
        render("bad", context(), templates_dir=tmp_path)
    ctx = context()
    del ctx["DENYLIST"]
    with pytest.raises(jinja2.UndefinedError):
        render_user_data(ctx)


def test_shquote_filter(tmp_path: Path) -> None:
    (tmp_path / "q.j2").write_text("echo {{ RUN.INFO | shquote }}")
    out = render("q", context(info="it's $(danger)"), templates_dir=tmp_path)
    assert out == "echo 'it'\"'\"'s $(danger)'"


# --------------------------------------------------------------------------- the start script runs


@pytest.fixture
def runner_dir(tmp_path: Path) -> Path:
    """A fake actions-runner directory whose run.sh records its arguments and user."""
    directory = tmp_path / "actions-runner"
    directory.mkdir()
    run = directory / "run.sh"
    run.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\nid -un > "$(dirname "$0")/user"\nexit "${FAKE_EXIT:-0}"\n'
    )
    run.chmod(run.stat().st_mode | stat.S_IEXEC)
    return directory


#: The only host tools the script (and the fake run.sh) may use: no nft, no real poweroff, no sudo.
TOOLS = ("id", "cat", "rm", "dirname", "printf", "logger")


def safe_path(tmp_path: Path) -> str:
    """A PATH of stand-ins and selected tools, so a test can never power off or firewall this machine.

    ``poweroff`` and ``sudo`` record their call; ``nft`` is absent, so the denylist can never be
    installed on the host.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("poweroff", "sudo"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls"\n')
        tool.chmod(0o755)
    for name in TOOLS:
        real = shutil.which(name)
        if real and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(real)
    assert not (bin_dir / "nft").exists()
    return str(bin_dir)


def run_script(
    tmp_path: Path, runner_dir: Path, env: dict[str, str], *, denylist: bool = False
) -> subprocess.CompletedProcess[str]:
    cfg = config() if denylist else config(denylist=[])
    script = tmp_path / "start-runner.sh"
    script.write_text(render_start_script(context(cfg)))
    script.chmod(0o755)
    full_env = {
        **env,
        "PATH": safe_path(tmp_path),
        "RUNNER_DIR": str(runner_dir),
        "RUNNER_USER": getpass.getuser(),
        "RUNNER_JITCONFIG_FILE": str(tmp_path / "jitconfig"),
    }
    return subprocess.run(
        ["/bin/sh", str(script)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def calls(tmp_path: Path) -> str:
    path = tmp_path / "calls"
    return path.read_text() if path.exists() else ""


def test_start_script_runs_the_runner_from_env_and_stays_up(
    tmp_path: Path, runner_dir: Path
) -> None:
    result = run_script(tmp_path, runner_dir, {"RUNNER_JITCONFIG": JIT, "RUNNER_NO_POWEROFF": "1"})
    assert result.returncode == 0, result.stderr
    assert (runner_dir / "args").read_text().split() == ["--jitconfig", JIT]
    assert (runner_dir / "user").read_text().strip() == getpass.getuser()
    assert "staying up" in result.stderr
    assert calls(tmp_path) == ""  # no poweroff
    assert JIT not in result.stderr  # logs name the source, never the value


def test_start_script_prefers_the_file_and_removes_it(tmp_path: Path, runner_dir: Path) -> None:
    (tmp_path / "jitconfig").write_text("from-file\n")
    result = run_script(
        tmp_path, runner_dir, {"RUNNER_JITCONFIG": "from-env", "RUNNER_NO_POWEROFF": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert (runner_dir / "args").read_text().split() == ["--jitconfig", "from-file"]
    assert not (tmp_path / "jitconfig").exists()


def test_start_script_powers_off_when_the_runner_exits(tmp_path: Path, runner_dir: Path) -> None:
    result = run_script(tmp_path, runner_dir, {"RUNNER_JITCONFIG": JIT, "FAKE_EXIT": "3"})
    assert result.returncode == 3
    assert "powering off" in result.stderr
    assert calls(tmp_path).split()[-1] == "poweroff"


def test_start_script_without_jit_config_fails_and_powers_off(
    tmp_path: Path, runner_dir: Path
) -> None:
    result = run_script(tmp_path, runner_dir, {})
    assert result.returncode == 1
    assert "no JIT config" in result.stderr
    assert not (runner_dir / "args").exists()
    assert "poweroff" in calls(tmp_path)


def test_start_script_refuses_jobs_when_the_denylist_cannot_be_installed(
    tmp_path: Path, runner_dir: Path
) -> None:
    env = {"RUNNER_JITCONFIG": JIT, "RUNNER_NO_POWEROFF": "1"}
    result = run_script(tmp_path, runner_dir, env, denylist=True)  # no nft on the safe PATH
    assert result.returncode == 1
    assert "cannot install the egress denylist" in result.stderr
    assert not (runner_dir / "args").exists()
    skipped = run_script(tmp_path, runner_dir, {**env, "RUNNER_NO_DENYLIST": "1"}, denylist=True)
    assert skipped.returncode == 0, skipped.stderr
    assert (runner_dir / "args").exists()


def test_denylist_ruleset_is_valid_nft(tmp_path: Path) -> None:
    nft = shutil.which("nft")
    if nft is None or os.geteuid() != 0:
        if ON_CI:
            pytest.fail("nft (nftables) and root are needed to check the denylist ruleset on CI")
        pytest.skip("nft or root not available")
    text = render_start_script(context())
    ruleset = text.split("<<'NFT'\n", 1)[1].split("\nNFT\n", 1)[0]
    rules = tmp_path / "rules.nft"
    rules.write_text(ruleset + "\n")
    check = subprocess.run(
        [nft, "-c", "-f", str(rules)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stderr
