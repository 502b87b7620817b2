"""A job's ``runs-on`` labels → which runner group serves it, and how big its runner is.

Pure functions over plain data. Labels follow nomadtools' convention: plain labels select a group,
``key=value`` tokens size the runner (``runs-on: [self-hosted, large, mem=16000, cpu=4]``, or one
string ``"nomadtools mem=16000"``). A token asking for more than the group's sizing policy allows is
refused (:class:`SizingRefused`), never served with a smaller machine than asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from github_runner_manager.config import RunnerGroup
from github_runner_manager.units import format_size, parse_size

__all__ = [
    "IMPLIED_LABELS",
    "JobRequest",
    "Sizing",
    "SizingRefused",
    "implied_labels",
    "match_group",
    "parse_runs_on",
    "size_for",
]

#: Labels every self-hosted Linux x64 runner carries without a group listing them.
IMPLIED_LABELS = frozenset({"self-hosted", "linux", "x64"})

_ARCH_LABELS = frozenset({"x64", "arm64", "arm", "x86"})
_OS_LABELS = frozenset({"linux", "windows", "macos"})


@dataclass(frozen=True)
class JobRequest:
    """What a job asks for.

    Attributes:
        labels: plain labels, lowercased (GitHub compares labels case-insensitively).
        tokens: ``key=value`` tokens; keys lowercased, values as written.
    """

    labels: frozenset[str]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def token_labels(self) -> list[str]:
        """The tokens as labels (``mem=16000``): a runner must carry them for GitHub to assign the job."""
        return [f"{key}={value}" for key, value in sorted(self.tokens.items())]


@dataclass(frozen=True)
class Sizing:
    """A runner's size: CPUs, memory bytes, root disk bytes."""

    cpu: int
    memory: int
    disk: int


class SizingRefused(ValueError):  # noqa: N818 - name fixed by docs/architecture.md
    """A runs-on token asks for more than the group allows, or is not a size at all."""


def parse_runs_on(labels: Iterable[str]) -> JobRequest:
    """Split runs-on labels into plain labels and ``k=v`` tokens.

    Each item may itself hold several space-separated words (``"nomadtools mem=16000"``). A key given
    twice keeps its last value.
    """
    plain: set[str] = set()
    tokens: dict[str, str] = {}
    for item in labels:
        for word in str(item).split():
            key, sep, value = word.partition("=")
            if sep and key:
                tokens[key.lower()] = value
            else:
                plain.add(word.lower())
    return JobRequest(labels=frozenset(plain), tokens=tokens)


def implied_labels(group: RunnerGroup) -> frozenset[str]:
    """The group's labels (lowercased) plus those implied: ``self-hosted``, the OS and the arch.

    ``linux``/``x64`` are implied unless the group names another OS/arch label (an ``arm64`` group
    does not take ``x64`` jobs).
    """
    own = frozenset(label.lower() for label in group.labels)
    implied = {"self-hosted"}
    if not own & _OS_LABELS:
        implied.add("linux")
    if not own & _ARCH_LABELS:
        implied.add("x64")
    return own | implied


def match_group(job: JobRequest, groups: Sequence[RunnerGroup]) -> RunnerGroup | None:
    """The first group (config order) whose labels, with the implied ones, include all the job's labels."""
    for group in groups:
        if job.labels <= implied_labels(group):
            return group
    return None


def _bounds(group: RunnerGroup) -> tuple[int, int, int]:
    policy = group.sizing
    if policy is None:
        return group.cpu, group.memory, group.disk
    return (
        policy.max_cpu if policy.max_cpu is not None else group.cpu,
        policy.max_memory if policy.max_memory is not None else group.memory,
        policy.max_disk if policy.max_disk is not None else group.disk,
    )


def _bound_source(group: RunnerGroup, policy_key: str, own_key: str) -> str:
    if group.sizing is not None and getattr(group.sizing, policy_key) is not None:
        return f"sizing.{policy_key}"
    return f"its own {own_key}; set sizing.{policy_key} to allow more"


def size_for(job: JobRequest, group: RunnerGroup) -> Sizing:
    """The runner size for a job in a group.

    Defaults are the group's ``cpu``/``memory``/``disk``; ``cpu=N`` (whole CPUs), ``mem=N`` (a plain
    number is MB as in nomadtools/Nomad, i.e. MiB; or a size like ``16GiB``) and ``disk=SIZE`` (plain
    number MiB) change them, up to the group's ``sizing`` policy (a bound the policy leaves unset,
    or a group without a policy, caps at the group's own size). Other tokens are ignored here
    (templates see them as ``RUNSON``).

    Raises:
        SizingRefused: a token is malformed or beyond the policy; the message names the token and the bound.
    """
    max_cpu, max_memory, max_disk = _bounds(group)
    cpu, memory, disk = group.cpu, group.memory, group.disk
    if "cpu" in job.tokens:
        raw = job.tokens["cpu"]
        token = f"cpu={raw}"
        if not raw.isdigit() or int(raw) < 1:
            raise SizingRefused(f'runs-on token "{token}" is not a whole number of CPUs like cpu=4')
        cpu = int(raw)
        if cpu > max_cpu:
            raise SizingRefused(
                f'runs-on token "{token}" asks for {cpu} CPUs but runner group "{group.name}" '
                f"allows at most {max_cpu} ({_bound_source(group, 'max_cpu', 'cpu')})"
            )
    for key, bound, policy_key in (
        ("mem", max_memory, "max_memory"),
        ("disk", max_disk, "max_disk"),
    ):
        if key not in job.tokens:
            continue
        raw = job.tokens[key]
        token = f"{key}={raw}"
        try:
            value = parse_size(raw)
        except ValueError:
            raise SizingRefused(
                f'runs-on token "{token}" is not a size like {key}=16000 (MB) or {key}=16GiB'
            ) from None
        if value > bound:
            what = "memory" if key == "mem" else "disk"
            raise SizingRefused(
                f'runs-on token "{token}" asks for {format_size(value)} of {what} but runner group '
                f'"{group.name}" allows at most {format_size(bound)} '
                f"({_bound_source(group, policy_key, what)})"
            )
        if key == "mem":
            memory = value
        else:
            disk = value
    return Sizing(cpu=cpu, memory=memory, disk=disk)
