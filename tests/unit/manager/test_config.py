"""config.py: the DESIGN.md example loads as-is; every bad value is an error naming its key path;
secrets never leak into errors or dumps; dumps load back to the same configuration."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from github_runner_manager.config import (
    REDACTED,
    ConfigError,
    GitHubPath,
    ManagerConfig,
    RunnerGroup,
    dump_config,
    load_config,
    parse_config,
)
from github_runner_manager.units import GIB, MIB

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "design_example.yaml"
SHARED = Path(
    os.environ.get(
        "GITHUB_RUNNER_SHARED_DIR", Path(__file__).resolve().parents[3].parent / "shared"
    )
)
ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

SECRET_TOKEN = "ghp_Sup3rSecretTokenValue0123456789"
SECRET_HOOK = "whsec-Very-Secret-Hook-Value"
SECRET_REDIS = "redis-pa55word-xyz"
SECRET_CLOUD = "cloud-pa55word-abc"


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "github": {"paths": ["acme"]},
        "runner_groups": [{"name": "small"}],
    }
    data.update(extra)
    return data


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


# --------------------------------------------------------------------------- the DESIGN.md example


def design_block() -> str | None:
    design = SHARED / "DESIGN.md"
    if not design.is_file():
        return None
    match = re.search(r"## The manager's config file.*?```yaml\n(.*?)```", design.read_text(), re.S)
    assert match, f"{design} has no yaml block under 'The manager's config file'"
    return match.group(1)


def test_fixture_is_a_verbatim_copy_of_design_md() -> None:
    block = design_block()
    if block is None:
        if ON_CI:
            pytest.fail(f"{SHARED / 'DESIGN.md'} is missing on CI (set GITHUB_RUNNER_SHARED_DIR)")
        pytest.skip(f"{SHARED / 'DESIGN.md'} not beside the checkout")
    assert EXAMPLE.read_text() == block, "design_example.yaml drifted from DESIGN.md: copy it again"


def test_design_example_loads_as_is() -> None:
    cfg = load_config(EXAMPLE)
    assert [str(p) for p in cfg.github.paths] == ["acme", "acme-labs/app"]
    assert cfg.github.token_file == Path("/etc/github-runner/token")
    assert cfg.webhook is not None and cfg.webhook.listen == "127.0.0.1:8080"
    assert cfg.reconcile_interval == 60.0
    assert (cfg.max_total_runners, cfg.per_owner_max_runners) == (50, 20)
    assert cfg.denylist == [ipaddress.ip_network("10.0.0.0/8")]
    small, large = cfg.runner_groups
    assert small.backend_order == ["lxd"]
    assert (small.cpu, small.memory, small.disk) == (2, 4 * GIB, 20 * GIB)
    assert (small.min_idle, small.max_runners, small.max_lifetime) == (2, 20, 6 * 3600.0)
    assert large.backend_order == ["lxd", "openstack"]
    assert large.memory == 32 * GIB and large.disk == 20 * GIB
    assert large.sizing is not None
    assert (large.sizing.max_cpu, large.sizing.max_memory) == (16, 64 * GIB)
    assert cfg.backends["openstack"]["cloud"] == "mycloud"
    assert cfg.backend_settings("lxd") == {}
    # groups register with github.paths[0] by default
    assert cfg.group_paths(small) == [GitHubPath.parse("acme")]


def test_design_example_as_a_mapping_too() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert parse_config(data) == load_config(EXAMPLE)


# --------------------------------------------------------------------------- GitHub paths


@pytest.mark.parametrize(
    ("text", "kind", "owner", "repo", "prefix"),
    [
        ("acme", "org", "acme", None, "/orgs/acme"),
        ("acme/app", "repo", "acme", "app", "/repos/acme/app"),
        ("acme-labs/my.app_2", "repo", "acme-labs", "my.app_2", "/repos/acme-labs/my.app_2"),
        ("enterprise:big", "enterprise", "big", None, "/enterprises/big"),
    ],
)
def test_github_path_forms(text: str, kind: str, owner: str, repo: str | None, prefix: str) -> None:
    path = GitHubPath.parse(text)
    assert (path.kind, path.owner, path.repo) == (kind, owner, repo)
    assert str(path) == text
    assert path.api_prefix == prefix
    assert hash(path) == hash(GitHubPath.parse(text))


@pytest.mark.parametrize("text", ["a/b/c", "", "/app", "acme/", "enterprise:", "ac me", "acme/.."])
def test_github_path_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is neither an org, owner/repo nor enterprise:NAME"):
        GitHubPath.parse(text)


def test_html_url() -> None:
    cfg = parse_config(minimal())
    assert cfg.github.html_url(GitHubPath.parse("acme/app")) == "https://github.com/acme/app"
    ghes = parse_config(minimal(github={"paths": ["acme"], "url": "https://ghe.example/api/v3"}))
    assert ghes.github.html_url(GitHubPath.parse("acme")) == "https://ghe.example/acme"
    emu = parse_config(minimal(github={"paths": ["acme"], "url": "http://127.0.0.1:8123"}))
    assert emu.github.html_url(GitHubPath.parse("acme/x")) == "http://127.0.0.1:8123/acme/x"


# --------------------------------------------------------------------------- defaults and units


def test_defaults() -> None:
    cfg = parse_config(minimal())
    group = cfg.runner_groups[0]
    assert group.backend_order == ["lxd"]
    assert (group.cpu, group.memory, group.disk) == (2, 4 * GIB, 20 * GIB)
    assert (group.min_idle, group.max_runners, group.ephemeral) == (0, 10, True)
    assert group.image == "github-runner-debian-bookworm" and group.runner_group == "default"
    assert cfg.webhook is None and cfg.redis.url == "redis://127.0.0.1:6379/0"
    assert (cfg.register_timeout, cfg.offline_timeout, cfg.concurrency) == (300.0, 120.0, 32)
    assert (cfg.create_backoff, cfg.create_backoff_max) == (2.0, 60.0)
    assert cfg.prefix == "ghr" and cfg.unit
    assert cfg.metrics_listen == "127.0.0.1:9464"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4GiB", 4 * GIB),
        ("512MiB", 512 * MIB),
        ("16G", 16 * GIB),
        (2048, 2048 * MIB),
        ("1TiB", 1024 * GIB),
    ],
)
def test_sizes_in_files(value: object, expected: int) -> None:
    cfg = parse_config(minimal(runner_groups=[{"name": "g", "memory": value, "disk": value}]))
    assert cfg.runner_groups[0].memory == expected == cfg.runner_groups[0].disk


def test_sizes_in_python_are_bytes() -> None:
    assert RunnerGroup(name="g", memory=8 * GIB).memory == 8 * GIB
    assert RunnerGroup(name="g", memory="8GiB").memory == 8 * GIB


@pytest.mark.parametrize(
    ("value", "expected"), [("60s", 60.0), ("6h", 21600.0), (90, 90.0), ("1.5m", 90.0)]
)
def test_durations(value: object, expected: float) -> None:
    cfg = parse_config(minimal(reconcile_interval=value, register_timeout=value))
    assert cfg.reconcile_interval == expected == cfg.register_timeout


def test_group_backend_needs_no_backends_entry() -> None:
    cfg = parse_config(minimal(runner_groups=[{"name": "g", "backend": "fake"}]))
    assert cfg.backends == {} and cfg.backend_settings("fake") == {}
    cfg = parse_config(minimal(backends={"fake": None}))
    assert cfg.backend_settings("fake") == {}


def test_group_paths_default_and_explicit() -> None:
    cfg = parse_config(
        minimal(
            github={"paths": ["acme", "other/repo"]},
            runner_groups=[{"name": "a"}, {"name": "b", "paths": ["other/repo"]}],
        )
    )
    assert [str(p) for p in cfg.runner_groups[0].paths or []] == ["acme"]
    assert [str(p) for p in cfg.runner_groups[1].paths or []] == ["other/repo"]
    assert cfg.group("b").name == "b"
    with pytest.raises(KeyError):
        cfg.group("zzz")


# --------------------------------------------------------------------------- errors name the key path


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    (
        minimal(runner_groups=[{"name": "a"}, {"name": "b", "memory": "7 gigs"}]),
        'runner_groups[1].memory: "7 gigs" is not a size like 7GiB',
    ),
    (
        minimal(github={"paths": ["a/b/c"]}),
        'github.paths[0]: "a/b/c" is neither an org, owner/repo nor enterprise:NAME',
    ),
    (
        minimal(runner_groups=[{"name": "a", "min_idle": 3, "max_runners": 2}]),
        "runner_groups[0]: max_runners (2) < min_idle (3)",
    ),
    (
        minimal(webhook={"lisen": "127.0.0.1:80"}),
        "webhook.lisen: unknown key (did you mean listen?)",
    ),
    (minimal(denylist=["10.0.0.0/33"]), 'denylist[0]: "10.0.0.0/33" is not a CIDR'),
    (
        minimal(denylist=["10.0.0.0/8", "10.1.2.3/8"]),
        'denylist[1]: "10.1.2.3/8" has host bits set; did you mean 10.0.0.0/8?',
    ),
    (
        minimal(runner_groups=[{"name": "a"}, {"name": "a"}]),
        'runner_groups[1].name: "a" is already used by runner_groups[0]',
    ),
    (
        minimal(runner_groups=[{"name": "a", "backend": "lxc"}]),
        'runner_groups[0].backend: "lxc" is not a known backend (did you mean lxd?',
    ),
    (
        minimal(runner_groups=[{"name": "a", "backends": ["lxd", "nova"]}]),
        'runner_groups[0].backends[1]: "nova" is not a known backend',
    ),
    (
        minimal(runner_groups=[{"name": "a", "backend": "lxd", "backends": ["lxd"]}]),
        "runner_groups[0]: set backend or backends, not both",
    ),
    (minimal(backends={"nope": {}}), 'backends.nope: "nope" is not a known backend'),
    (
        minimal(runner_groups=[{"name": "Big_Group"}]),
        'runner_groups[0].name: "Big_Group" is not a group name',
    ),
    (
        minimal(runner_groups=[{"name": "a", "cpu": "lots"}]),
        'runner_groups[0].cpu: "lots" is not a whole number',
    ),
    (
        minimal(runner_groups=[{"name": "a", "cpu": 0}]),
        'runner_groups[0].cpu: "0" must be at least 1',
    ),
    (
        minimal(runner_groups=[{"name": "a", "max_lifetime": "forever"}]),
        'runner_groups[0].max_lifetime: "forever" is not a duration like 60s',
    ),
    (
        minimal(runner_groups=[{"name": "a", "labels": ["ok", "not ok"]}]),
        'runner_groups[0].labels[1]: "not ok" is not a label',
    ),
    (
        minimal(runner_groups=[{"name": "a", "cpu": 8, "sizing": {"max_cpu": 4}}]),
        "runner_groups[0].sizing.max_cpu: 4 is below the group's own cpu (8)",
    ),
    (
        minimal(runner_groups=[{"name": "a", "sizing": {"max_mem": "8GiB"}}]),
        "runner_groups[0].sizing.max_mem: unknown key (did you mean max_memory?)",
    ),
    (
        minimal(runner_groups=[{"name": "a", "paths": ["elsewhere"]}]),
        'runner_groups[0].paths[0]: "elsewhere" is not one of github.paths (acme)',
    ),
    (
        minimal(runner_groups=[{"name": "a", "ephemeral": "maybe"}]),
        'runner_groups[0].ephemeral: "maybe" is not true or false',
    ),
    (minimal(runner_groups=[]), "runner_groups: needs at least 1 entries"),
    (minimal(github={"paths": []}), "github.paths: needs at least 1 entries"),
    (minimal(github={"paths": ["acme", "acme"]}), 'github.paths[1]: "acme" is listed twice'),
    ({"runner_groups": [{"name": "a"}]}, "github: is required"),
    (
        minimal(github={"paths": ["acme"], "url": "ftp://x"}),
        'github.url: "ftp://x" is not an http(s) URL',
    ),
    (minimal(redis={"url": "memcached://x"}), 'redis.url: "memcached://x" is not a Redis URL'),
    (
        minimal(redis={"url": "redis://h:port/0"}),
        'redis.url: "redis://h:port/0" has a port that is not a number',
    ),
    (
        minimal(redis={"url": "redis+sentinel://a:1,b:x/m/0"}),
        'redis.url: "redis+sentinel://a:1,b:x/m/0" has a port',
    ),
    (
        minimal(redis={"url": "redis+sentinel://h:26379"}),
        'redis.url: "redis+sentinel://h:26379" names no Sentinel master',
    ),
    (minimal(prefix="Too_Long_Prefix"), 'prefix: "Too_Long_Prefix" is not a prefix'),
    (minimal(max_total_runners=-1), 'max_total_runners: "-1" must be at least 0'),
    (
        minimal(metrics_listen="9464"),
        'metrics_listen: "9464" is not an address like 127.0.0.1:9464',
    ),
    (minimal(webhook={"path": "hook"}), 'webhook.path: "hook" is not a URL path like /webhook'),
    (minimal(reconcile_interval=0), 'reconcile_interval: "0.0" must be greater than 0'),
    (minimal(runnergroups=[]), "runnergroups: unknown key (did you mean runner_groups?)"),
    (minimal(zzz=1), "zzz: unknown key (accepted: github, webhook,"),
]


@pytest.mark.parametrize(
    ("data", "expected"), BAD_VALUES, ids=[e.split(":")[0] for _, e in BAD_VALUES]
)
def test_bad_value_is_named(data: dict[str, Any], expected: str) -> None:
    problems = problems_of(data)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_listed_at_once() -> None:
    data = minimal(
        github={"paths": ["a/b/c"]},
        webhook={"lisen": "x"},
        denylist=["10.0.0.0/33"],
        runner_groups=[
            {"name": "a", "memory": "7 gigs", "min_idle": 3, "max_runners": 2},
            {"name": "a", "cpu": "x"},
        ],
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = str(info.value)
    for expected in (
        "github.paths[0]:",
        "webhook.lisen:",
        "denylist[0]:",
        "runner_groups[0].memory:",
        "runner_groups[0]: max_runners (2) < min_idle (3)",
        "runner_groups[1].cpu:",
        'runner_groups[1].name: "a" is already used by runner_groups[0]',
    ):
        assert expected in text
    assert len(info.value.problems) == 7


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("github: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text(
        "github: {paths: [acme]}\ngithub: {paths: [other]}\nrunner_groups: [{name: a}]\n"
    )
    with pytest.raises(ConfigError, match='key "github" is given twice'):
        load_config(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match="github: is required"):
        load_config(bad)


# --------------------------------------------------------------------------- secrets


def secret_config() -> dict[str, Any]:
    return minimal(
        github={"paths": ["acme"], "token": SECRET_TOKEN},
        webhook={"secret": SECRET_HOOK},
        redis={"url": f"redis://:{SECRET_REDIS}@127.0.0.1:6379/0"},
        backends={
            "openstack": {
                "password": SECRET_CLOUD,
                "cloud": "mycloud",
                "auth": {"token": SECRET_CLOUD},
            }
        },
    )


def assert_no_secret(text: str) -> None:
    for secret in (SECRET_TOKEN, SECRET_HOOK, SECRET_REDIS, SECRET_CLOUD):
        assert secret not in text


def test_dump_redacts_every_secret() -> None:
    cfg = parse_config(secret_config())
    text = dump_config(cfg)
    assert_no_secret(text)
    dumped = yaml.safe_load(text)
    assert dumped["github"]["token"] == REDACTED
    assert dumped["webhook"]["secret"] == REDACTED
    assert dumped["redis"]["url"] == f"redis://:{REDACTED}@127.0.0.1:6379/0"
    assert dumped["backends"]["openstack"]["password"] == REDACTED
    assert dumped["backends"]["openstack"]["cloud"] == "mycloud"
    assert_no_secret(repr(cfg))
    assert_no_secret(str(cfg))
    # the values themselves are still there for the manager
    assert cfg.github.resolve_token().get_secret_value() == SECRET_TOKEN
    assert (
        cfg.webhook is not None and cfg.webhook.resolve_secret().get_secret_value() == SECRET_HOOK
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["github"].update(paths=["a/b/c"], bogus=SECRET_TOKEN),
        lambda d: d["github"].update(token=12345678, tokn=SECRET_TOKEN),
        lambda d: d["webhook"].update(secret=[SECRET_HOOK]),
        lambda d: d["redis"].update(url=f"redis://:{SECRET_REDIS}@host:notaport/0"),
        lambda d: d["redis"].update(url=f"redis://:{SECRET_REDIS}@host:6379/db"),
        lambda d: d["backends"].update(nope={"password": SECRET_CLOUD}),
        lambda d: d.update(backends=SECRET_CLOUD),
    ],
)
def test_errors_never_show_secrets(mutate: Any) -> None:
    data = secret_config()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert_no_secret(str(info.value))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_yaml_error_does_not_quote_the_line(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(f"github:\n  token: {SECRET_TOKEN}: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert_no_secret(str(info.value))


def test_token_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(f"{SECRET_TOKEN}\n")
    cfg = parse_config(minimal(github={"paths": ["acme"], "token_file": str(token_file)}))
    assert cfg.github.resolve_token().get_secret_value() == SECRET_TOKEN
    # token wins over token_file
    cfg = parse_config(
        minimal(github={"paths": ["acme"], "token": "direct", "token_file": str(token_file)})
    )
    assert cfg.github.resolve_token().get_secret_value() == "direct"
    # missing file: an error naming the key, not a fallback to the environment
    monkeypatch.setenv("GITHUB_TOKEN", "from-env")
    cfg = parse_config(minimal(github={"paths": ["acme"], "token_file": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match=r"^github.token_file: .*nope does not exist"):
        cfg.github.resolve_token()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cfg = parse_config(minimal(github={"paths": ["acme"], "token_file": str(empty)}))
    with pytest.raises(ConfigError, match=r"github.token_file: .* is empty"):
        cfg.github.resolve_token()
    # environment last; an empty token counts as unset
    cfg = parse_config(minimal(github={"paths": ["acme"], "token": ""}))
    assert cfg.github.token is None
    assert cfg.github.resolve_token().get_secret_value() == "from-env"
    monkeypatch.delenv("GITHUB_TOKEN")
    with pytest.raises(ConfigError, match=r"github.token: no GitHub token"):
        cfg.github.resolve_token()


def test_webhook_secret_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET", raising=False)
    secret_file = tmp_path / "hook"
    secret_file.write_text(SECRET_HOOK)
    cfg = parse_config(minimal(webhook={"secret_file": str(secret_file)}))
    assert cfg.webhook is not None
    assert cfg.webhook.resolve_secret().get_secret_value() == SECRET_HOOK
    secret_file.unlink()
    with pytest.raises(ConfigError, match=r"webhook.secret_file: .* does not exist"):
        cfg.webhook.resolve_secret()
    cfg = parse_config(minimal(webhook={}))
    assert cfg.webhook is not None
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "env-secret")
    assert cfg.webhook.resolve_secret().get_secret_value() == "env-secret"
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET")
    with pytest.raises(ConfigError, match=r"webhook.secret: no webhook secret"):
        cfg.webhook.resolve_secret()


# --------------------------------------------------------------------------- dump round-trip


def roundtrip(cfg: ManagerConfig) -> ManagerConfig:
    return parse_config(yaml.safe_load(dump_config(cfg)))


def test_dump_round_trips_design_example() -> None:
    cfg = load_config(EXAMPLE)
    again = roundtrip(cfg)
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)


def test_dump_round_trips_odd_values() -> None:
    cfg = parse_config(
        minimal(
            github={
                "paths": ["acme", "enterprise:big", "acme/app"],
                "timeout": "1.5s",
                "poll_interval": 0.25,
            },
            webhook={"listen": "[::]:9000", "path": "/hooks/gh"},
            redis={"url": "redis+sentinel://a:26379,b:26379/mymaster/2", "key_prefix": "x:y"},
            denylist=["10.0.0.0/8", "fd00::/8", "192.0.2.1"],
            runner_groups=[
                {
                    "name": "odd",
                    "memory": "1.5GiB",
                    "disk": "0.3KiB",
                    "max_lifetime": "90m",
                    "sizing": {"max_memory": "3000MiB", "max_disk": "1TiB"},
                    "backends": ["fake", "docker"],
                    "paths": ["enterprise:big", "acme/app"],
                    "labels": ["x64", "gpu=1"],
                },
                {"name": "plain", "max_runners": 0, "runner_group": "special", "ephemeral": False},
            ],
            templates_dir="/srv/templates",
            metrics_listen=None,
            max_total_runners=7,
        )
    )
    again = roundtrip(cfg)
    assert again == cfg
    assert again.runner_groups[0].disk == cfg.runner_groups[0].disk == 307


def test_dump_round_trips_except_secrets() -> None:
    cfg = parse_config(secret_config())
    again = roundtrip(cfg)
    assert again.github.token is not None
    assert again.github.token.get_secret_value() == REDACTED
    assert again.model_dump(
        exclude={"github": {"token"}, "webhook": {"secret"}, "redis": {"url"}, "backends": True}
    ) == cfg.model_dump(
        exclude={"github": {"token"}, "webhook": {"secret"}, "redis": {"url"}, "backends": True}
    )


def test_create_backoff_bounds_are_checked_and_named() -> None:
    cfg = parse_config(minimal(create_backoff="5s", create_backoff_max="10m"))
    assert (cfg.create_backoff, cfg.create_backoff_max) == (5.0, 600.0)
    problems = problems_of(minimal(create_backoff="2m", create_backoff_max="30s"))
    assert problems == [
        "create_backoff_max: 30s is shorter than create_backoff (120s): make it at least as long"
    ], problems
    assert any(p.startswith("create_backoff:") for p in problems_of(minimal(create_backoff="0s")))
