"""labels.py: runs-on parsing, group matching, sizing within policy and refusals."""

from __future__ import annotations

import pytest

from github_runner_manager.config import RunnerGroup, SizingPolicy, parse_config
from github_runner_manager.labels import (
    JobRequest,
    Sizing,
    SizingRefused,
    implied_labels,
    match_group,
    parse_runs_on,
    size_for,
)
from github_runner_manager.units import GIB, MIB

SMALL = RunnerGroup(
    name="small",
    labels=["self-hosted", "linux", "x64", "small"],
    cpu=2,
    memory=4 * GIB,
    disk=20 * GIB,
)
LARGE = RunnerGroup(
    name="large",
    labels=["Large"],
    cpu=8,
    memory=32 * GIB,
    disk=20 * GIB,
    sizing=SizingPolicy(max_cpu=16, max_memory=64 * GIB),
)
NOMAD = RunnerGroup(
    name="nomad",
    labels=["nomadtools"],
    cpu=1,
    memory=2 * GIB,
    disk=10 * GIB,
    sizing=SizingPolicy(max_cpu=8, max_memory=32 * GIB, max_disk=100 * GIB),
)
ARM = RunnerGroup(name="arm", labels=["arm64", "small"])
GROUPS = [SMALL, LARGE, NOMAD, ARM]


@pytest.mark.parametrize(
    ("runs_on", "labels", "tokens"),
    [
        (
            ["self-hosted", "large", "mem=16000", "cpu=4"],
            {"self-hosted", "large"},
            {"mem": "16000", "cpu": "4"},
        ),
        (["nomadtools mem=16000"], {"nomadtools"}, {"mem": "16000"}),
        (["Self-Hosted", "LARGE", "Disk=50G"], {"self-hosted", "large"}, {"disk": "50G"}),
        (["  a   b  ", "size=large", "cpu=2 cpu=3"], {"a", "b"}, {"size": "large", "cpu": "3"}),
        ([], set(), {}),
        (["=x", "k="], {"=x"}, {"k": ""}),
    ],
)
def test_parse_runs_on(runs_on: list[str], labels: set[str], tokens: dict[str, str]) -> None:
    job = parse_runs_on(runs_on)
    assert job.labels == frozenset(labels)
    assert job.tokens == tokens


def test_token_labels_for_registration() -> None:
    job = parse_runs_on(["self-hosted", "nomadtools mem=16000 cpu=4"])
    assert job.token_labels == ["cpu=4", "mem=16000"]


@pytest.mark.parametrize(
    ("runs_on", "group"),
    [
        (["self-hosted"], "small"),
        (["self-hosted", "linux", "x64", "small"], "small"),
        (["small"], "small"),  # first in config order wins over arm
        (
            ["self-hosted", "large", "mem=16000", "cpu=4"],
            "large",
        ),  # tokens do not take part in matching
        (["LARGE", "linux"], "large"),  # case-insensitive both ways
        (["nomadtools mem=16000"], "nomad"),
        (["arm64", "small"], "arm"),
        (["arm64", "x64"], None),  # an arm64 group does not imply x64
        (["windows"], None),
        (["self-hosted", "gpu"], None),
        (["ubuntu-latest"], None),
    ],
)
def test_match_group(runs_on: list[str], group: str | None) -> None:
    matched = match_group(parse_runs_on(runs_on), GROUPS)
    assert (matched.name if matched else None) == group


def test_implied_labels() -> None:
    assert implied_labels(SMALL) == {"self-hosted", "linux", "x64", "small"}
    assert implied_labels(ARM) == {"self-hosted", "linux", "arm64", "small"}


def test_match_group_with_config_groups() -> None:
    cfg = parse_config(
        {
            "github": {"paths": ["acme"]},
            "runner_groups": [
                {"name": "a", "labels": ["gpu"]},
                {"name": "b", "labels": ["gpu", "big"]},
            ],
        }
    )
    assert match_group(parse_runs_on(["gpu", "big"]), cfg.runner_groups).name == "b"  # type: ignore[union-attr]
    assert match_group(parse_runs_on(["gpu"]), cfg.runner_groups).name == "a"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("group", "runs_on", "expected"),
    [
        (SMALL, ["small"], Sizing(2, 4 * GIB, 20 * GIB)),
        (SMALL, ["small", "cpu=1", "mem=2GiB"], Sizing(1, 2 * GIB, 20 * GIB)),  # smaller is fine
        (LARGE, ["large", "mem=16000", "cpu=4"], Sizing(4, 16000 * MIB, 20 * GIB)),  # nomadtools MB
        (LARGE, ["large mem=64GiB cpu=16"], Sizing(16, 64 * GIB, 20 * GIB)),  # exactly at the bound
        (LARGE, ["large", "size=xl"], Sizing(8, 32 * GIB, 20 * GIB)),  # other tokens are ignored
        (NOMAD, ["nomadtools", "mem=16000", "disk=50G"], Sizing(1, 16000 * MIB, 50 * GIB)),
        (
            NOMAD,
            ["nomadtools", "disk=2048"],
            Sizing(1, 2 * GIB, 2 * GIB),
        ),  # plain disk number is MiB
        (NOMAD, ["nomadtools", "memory=9"], Sizing(1, 2 * GIB, 10 * GIB)),  # only mem= sizes memory
    ],
)
def test_size_for(group: RunnerGroup, runs_on: list[str], expected: Sizing) -> None:
    assert size_for(parse_runs_on(runs_on), group) == expected


@pytest.mark.parametrize(
    ("group", "runs_on", "message"),
    [
        (
            LARGE,
            ["cpu=17"],
            r'"cpu=17" asks for 17 CPUs but runner group "large" allows at most 16 \(sizing.max_cpu\)',
        ),
        (
            LARGE,
            ["mem=65GiB"],
            r'"mem=65GiB" asks for 65GiB of memory .* at most 64GiB \(sizing.max_memory\)',
        ),
        (LARGE, ["mem=100000"], r'"mem=100000" asks for 100000MiB of memory .* at most 64GiB'),
        # no max_disk in the policy: the group's own disk is the bound
        (
            LARGE,
            ["disk=21GiB"],
            r'"disk=21GiB" .* at most 20GiB \(its own disk; set sizing.max_disk to allow more\)',
        ),
        # no policy at all: the group's own sizes are the bounds
        (
            SMALL,
            ["cpu=3"],
            r'"cpu=3" asks for 3 CPUs .* "small" allows at most 2 \(its own cpu; set sizing.max_cpu',
        ),
        (SMALL, ["mem=5GiB"], r'"mem=5GiB" .* at most 4GiB \(its own memory'),
        (NOMAD, ["disk=101GiB"], r'"disk=101GiB" .* at most 100GiB \(sizing.max_disk\)'),
        (SMALL, ["cpu=two"], r'"cpu=two" is not a whole number of CPUs'),
        (SMALL, ["cpu=0"], r'"cpu=0" is not a whole number of CPUs'),
        (SMALL, ["mem=lots"], r'"mem=lots" is not a size like mem=16000 \(MB\) or mem=16GiB'),
        (SMALL, ["disk=-1"], r'"disk=-1" is not a size'),
    ],
)
def test_sizing_refused(group: RunnerGroup, runs_on: list[str], message: str) -> None:
    with pytest.raises(SizingRefused, match=message):
        size_for(parse_runs_on(runs_on), group)


def test_sizing_refused_is_a_value_error() -> None:
    assert issubclass(SizingRefused, ValueError)
    assert JobRequest(frozenset()).tokens == {}
