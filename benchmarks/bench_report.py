"""Renders BENCHMARKS.md from one result file: every figure with its target and met/missed, the ratios
against the three baselines, the machine/date/commit, and why a target is missed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Result = dict[str, Any]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    number = _num(value)
    if number is None:
        return "—"
    if unit == "s" and abs(number) < 0.1:
        text = f"{number * 1000:.1f} ms"
        return text
    if number >= 1000 or (number == int(number) and unit not in ("s",)):
        text = f"{number:,.0f}"
    else:
        text = f"{number:.{digits}f}"
    return f"{text} {unit}".strip() if unit else text


def reason(result: Result, key: str) -> str:
    return str(result.get(f"{key}_reason") or "")


class Row:
    """One line of the figures table."""

    def __init__(
        self,
        label: str,
        key: str,
        unit: str,
        target: str = "",
        limit: Callable[[Result], float | None] | None = None,
        note: str = "",
    ) -> None:
        self.label, self.key, self.unit, self.target, self.limit, self.note = (
            label,
            key,
            unit,
            target,
            limit,
            note,
        )

    def status(self, result: Result) -> str:
        value = _num(result.get(self.key))
        if self.limit is None:
            return ""
        bound = self.limit(result)
        if value is None or bound is None:
            return "not measured"
        return "met" if value <= bound else "**missed**"

    def render(self, result: Result) -> str:
        value = result.get(self.key)
        if value is not None:
            shown = fmt(value, self.unit)
        elif self.key in result:
            shown = f"null ({reason(result, self.key)})"
        else:
            shown = "—"
        target = self.target
        if self.limit is not None and "{" in target:
            bound = self.limit(result)
            target = target.format(bound=fmt(bound, self.unit) if bound is not None else "?")
        return f"| {self.label} | {shown} | {target} | {self.status(result)} | {self.note} |"


#: The service jitters the poll interval by ±10 %, so a job can wait up to 1.1 intervals for the poll.
POLL_JITTER = 1.1


def _const(value: float) -> Callable[[Result], float | None]:
    return lambda _r: value


def _plus(key: str, extra: float, extra_key: str | None = None) -> Callable[[Result], float | None]:
    def bound(result: Result) -> float | None:
        base = _num(result.get(key))
        if base is None:
            return None
        details = result.get("details", {})
        settings = {**details.get("pickup_settings", {}), **details.get("lxd", {})}
        more = _num(settings.get(extra_key)) if extra_key else 0.0
        # the service waits poll_interval x uniform(0.9, 1.1) between polls
        return base + extra + POLL_JITTER * (more or 0.0)

    return bound


def _cold(label: str, key: str, launch: str, extra_key: str | None = None) -> list[Row]:
    """p50 / p95 / max rows of one cold scenario; p50 and p95 against the instance start at that percentile."""
    poll = " + 1.1 x poll interval" if extra_key else ""
    derived = "derived: " if extra_key else ""
    return [
        Row(
            f"{label}, p50",
            f"{key}_p50_s",
            "s",
            f"{derived}≤ start p50{poll} + 2 s = {{bound}}",
            _plus(launch, 2.0, extra_key),
        ),
        Row(
            f"{label}, p95",
            f"{key}_p95_s",
            "s",
            f"{derived}≤ start p95{poll} + 2 s = {{bound}}",
            _plus(f"{launch.removesuffix('_s')}_p95_s", 2.0, extra_key),
        ),
        Row(f"{label}, max", f"{key}_max_s", "s"),
    ]


def rows() -> list[Row]:
    return [
        Row("Pickup, warm pool, p50", "pickup_warm_p50_s", "s"),
        Row("Pickup, warm pool, p95", "pickup_warm_p95_s", "s", "≤ 1 s", _const(1.0)),
        Row("Pickup, warm pool, max", "pickup_warm_max_s", "s"),
        Row(
            "Pickup, warm pool, webhooks lost, p95",
            "pickup_warm_poll_p95_s",
            "s",
            "≤ 1 s",
            _const(1.0),
        ),
        Row("Instance start, Fake 0.5 s (create → runner online), p50", "fake_launch_0_5_s", "s"),
        Row("Instance start, Fake 0.5 s, p95", "fake_launch_0_5_p95_s", "s"),
        *_cold("Pickup, cold, Fake 0.5 s", "pickup_cold_fake_0_5", "fake_launch_0_5_s"),
        *_cold(
            "Pickup, cold, Fake 0.5 s, webhooks lost",
            "pickup_cold_fake_0_5_poll",
            "fake_launch_0_5_s",
            "poll_interval_s",
        ),
        Row("Instance start, Fake 2 s (create → runner online), p50", "fake_launch_2_s", "s"),
        Row("Instance start, Fake 2 s, p95", "fake_launch_2_p95_s", "s"),
        *_cold("Pickup, cold, Fake 2 s", "pickup_cold_fake_2", "fake_launch_2_s"),
        *_cold(
            "Pickup, cold, Fake 2 s, webhooks lost",
            "pickup_cold_fake_2_poll",
            "fake_launch_2_s",
            "poll_interval_s",
        ),
        Row("LXD instance start (create → runner online), p50", "lxd_launch_s", "s"),
        Row("LXD instance start, p95", "lxd_launch_p95_s", "s"),
        Row("LXD create call alone, p50", "lxd_create_api_s", "s"),
        *_cold("Pickup, cold, LXD", "pickup_cold_lxd", "lxd_launch_s"),
        *_cold(
            "Pickup, cold, LXD, webhooks lost",
            "pickup_cold_lxd_poll",
            "lxd_launch_s",
            "lxd_poll_interval_s",
        ),
        Row("GitHub units per hour, 50 runners", "api_units_per_hour_50", "units"),
        Row(
            "GitHub units per hour, 500 runners",
            "api_units_per_hour_500",
            "units",
            "≤ 50",
            _const(50.0),
        ),
        Row("GitHub units per hour, 1,000 runners", "api_units_per_hour_1000", "units"),
        Row("GitHub units per reconcile, 500 runners", "api_units_per_reconcile_500", "units"),
        Row("GitHub units per missed-webhook poll, 500 runners", "api_units_per_poll_500", "units"),
        Row("GitHub units per job (marginal), 500 runners", "api_units_per_job_500", "units"),
        Row("GitHub requests per hour, 500 runners", "api_requests_per_hour_500", "req"),
        Row("Reconcile, 1,000 runners (median)", "reconcile_1000_s", "s", "≤ 2 s", _const(2.0)),
        Row("Planner alone, 1,000 runners", "planner_1000_s", "s"),
        Row("Reconcile 0 → 1,000 runners (no create latency)", "reconcile_converge_1000_s", "s"),
        Row(
            "Create 200 runners at 1 s each (wall)",
            "create_200_at_1s_wall_s",
            "s",
            "≤ 10 s",
            _const(10.0),
        ),
        Row(
            "… with GitHub's secondary limit (180 writes/min)",
            "create_200_at_1s_secondary_limit_wall_s",
            "s",
            note="GitHub caps JIT registrations, not the manager",
        ),
        Row(
            "Manager resident memory, 1,000 runners", "rss_1000_mb", "MB", "≤ 150 MB", _const(150.0)
        ),
        Row("… its high-water mark", "rss_1000_peak_mb", "MB"),
        Row("Emulator requests/second (slowest scenario)", "emulator_rps", "req/s"),
        Row("Emulator requests/second, plain GET", "emulator_rps_plain_get", "req/s"),
        Row("Image build, cold (empty cache)", "image_build_cold_s", "s"),
        Row("Image build, warm (cached root filesystem)", "image_build_warm_s", "s"),
    ]


BASELINE_NAMES = {
    "nomadtools": "(a) nomadtools: repo x workflow x run scan",
    "per_runner": "(b) per-runner polling",
    "unconditional": "(c) list all runners, unconditional",
}


def baselines_table(result: Result) -> list[str]:
    api = result.get("details", {}).get("api", {})
    fleets = api.get("fleets", {})
    if not fleets:
        return ["The API-cost benchmark did not run: " + reason(result, "api_units_per_hour_500")]
    out = [
        "| runners | algorithm | units / cycle | units / hour | ratio to this project (units) | requests / hour | ratio (requests) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, data in fleets.items():
        ours = data.get("ours", {})
        units_h = ours.get("units_per_hour")
        req_h = ours.get("requests_per_hour")
        per_cycle = (
            f"{fmt(ours.get('units_per_reconcile'))} + {fmt(ours.get('units_per_poll'))} per poll"
        )
        out.append(
            f"| {n} | **this project** (reconcile + conditional poll) | {per_cycle} | {fmt(units_h)} | 1x | {fmt(req_h)} | 1x |"
        )
        for name, base in data.get("baselines", {}).items():
            ratio_u = _num(base.get("units_per_hour")) or 0.0
            ratio_r = _num(base.get("requests_per_hour")) or 0.0
            ours_u = max(_num(units_h) or 0.0, 1.0)
            ours_r = max(_num(req_h) or 0.0, 1.0)
            floor = "≥ " if (_num(units_h) or 0.0) < 1.0 else ""
            label = BASELINE_NAMES.get(name, name) + (
                " (lower bound, see below)" if base.get("notes") else ""
            )
            out.append(
                f"| {n} | {label} | {fmt(base.get('units_per_cycle'))} | "
                f"{fmt(base.get('units_per_hour'))} | {floor}{fmt(ratio_u / ours_u)}x | "
                f"{fmt(base.get('requests_per_hour'))} | {fmt(ratio_r / ours_r)}x |"
            )
    return out


#: cold scenarios with an instance-start sample right before each job: (scenario, launch details, label)
PAIRED = (
    ("cold_fake_0_5", ("fake_launch", "0_5"), "Fake 0.5 s"),
    ("cold_fake_2", ("fake_launch", "2"), "Fake 2 s"),
    ("cold_lxd", ("lxd", "launch"), "LXD"),
)


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (as bench_support.percentile)."""
    data = sorted(values)
    rank = (len(data) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def paired_overheads(result: Result) -> dict[str, list[float]]:
    """Per cold scenario: each job's pickup minus the instance start sampled right before it.

    Only where the pairs line up (as many start samples as pickups, none left out as not cold).
    """
    details = result.get("details", {})
    out: dict[str, list[float]] = {}
    for scenario, (section, sub), _label in PAIRED:
        info = details.get("pickup", {}).get(scenario, {})
        launch = details.get(section, {}).get(sub, {})
        pickups = info.get("latencies") or []
        starts = launch.get("online_s") or []
        if (
            pickups
            and len(pickups) == len(starts)
            and not info.get("not_cold")
            and not launch.get("failures")
        ):
            out[scenario] = [p - s for p, s in zip(pickups, starts, strict=True)]
    return out


def overhead_table(result: Result) -> list[str]:
    pairs = paired_overheads(result)
    if not pairs:
        return []
    lines = [
        "",
        "### The manager's share of a cold pickup",
        "",
        "Each cold job is preceded by an instance-start sample on the same backend (same load); pickup minus that "
        "start is what the manager adds (webhook delivery, the job consumer, the JIT registration, the create call) "
        "plus the spread of the backend between two identical creates.",
        "",
        "| backend | pairs | p50 | p95 | min | max | spread of the start samples (min-max) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    details = result.get("details", {})
    for scenario, (section, sub), label in PAIRED:
        diffs = pairs.get(scenario)
        if not diffs:
            continue
        starts = details.get(section, {}).get(sub, {}).get("online_s") or []
        ordered = sorted(diffs)
        p50, p95 = _percentile(ordered, 50), _percentile(ordered, 95)
        lines.append(
            f"| {label} | {len(diffs)} | {fmt(p50, 's')} | {fmt(p95, 's')} | {fmt(ordered[0], 's')} | "
            f"{fmt(ordered[-1], 's')} | {fmt(min(starts), 's')} - {fmt(max(starts), 's')} |"
        )
    return lines


def missed(result: Result) -> list[str]:
    """Why each missed target was missed (from the measured decomposition)."""
    notes: list[str] = []
    details = result.get("details", {})
    emulator_rps = _num(result.get("emulator_rps_plain_get")) or _num(result.get("emulator_rps"))
    cpus = result.get("machine", {}).get("cpus")
    for row in rows():
        if row.status(result) != "**missed**":
            continue
        value = _num(result.get(row.key)) or 0.0
        bound = row.limit(result) if row.limit else None
        target = row.target.split("=")[0].strip().removeprefix("derived: ")
        text = (
            f"* **{row.label}: {fmt(value, row.unit)}** against {fmt(bound, row.unit)} ({target}). "
        )
        if row.key.startswith("pickup_cold"):
            base = (
                "lxd_launch"
                if "lxd" in row.key
                else ("fake_launch_2" if "_2_" in row.key else "fake_launch_0_5")
            )
            launch_key = f"{base}_p95_s" if row.key.endswith("_p95_s") else f"{base}_s"
            launch = _num(result.get(launch_key)) or 0.0
            text += (
                f"The instance alone needs {fmt(launch, 's')} at that percentile to start and connect; the rest "
                f"({fmt(value - launch, 's')}) is webhook delivery, the job consumer, the JIT registration and the "
                "create call, plus the spread of the instance start between samples. "
            )
            scenario = row.key.removeprefix("pickup_").rsplit("_", 2)[0]
            info = details.get("pickup", {}).get(scenario, {})
            if info.get("latencies"):
                text += f"Samples: {', '.join(fmt(x, 's') for x in info['latencies'])}. "
            diffs = paired_overheads(result).get(scenario)
            if diffs:
                text += (
                    "Job by job, pickup minus the instance start sampled just before it: "
                    f"{', '.join(fmt(x, 's') for x in diffs)}. "
                )
            fake = paired_overheads(result).get("cold_fake_0_5")
            if "lxd" in scenario and fake:
                text += (
                    "With the Fake backend, whose create time is fixed, the same difference is "
                    f"{fmt(_percentile(fake, 50), 's')} (median): the manager's own share is small, and the "
                    "miss comes from LXD's create time varying between two identical creates on this shared "
                    f"machine (`{details.get('lxd', {}).get('storage_driver') or 'unknown'}` storage pool"
                    + (
                        ": each create copies the whole image)."
                        if details.get("lxd", {}).get("storage_driver") == "dir"
                        else ")."
                    )
                )
        elif row.key == "create_200_at_1s_wall_s":
            create = details.get("scale", {}).get("create_200", {})
            conc = create.get("concurrency", 32)
            rounds = math.ceil(200 / conc)
            text += (
                f"With concurrency {conc} the 1 s creates alone take ⌈200/{conc}⌉ = {rounds} s; each create also "
                f"registers a JIT runner (a POST to the emulator, which serves ~{fmt(emulator_rps)} requests/s on "
                f"this {cpus}-CPU machine) and writes Redis records, all in one Python process sharing the CPUs "
                "with the emulator."
            )
        elif row.key == "reconcile_1000_s":
            text += (
                "Most of it is the GitHub listing (10 pages, served by an emulator at "
                f"~{fmt(emulator_rps)} requests/s here) and the 1,000 Redis records; the planner alone takes "
                f"{fmt(result.get('planner_1000_s'), 's')}."
            )
        elif row.key == "rss_1000_mb":
            text += "Resident memory of the whole `run` process (interpreter, libraries, thread stacks, caches)."
        elif row.key.startswith("api_units"):
            text += "See the per-operation counts in the details of results/latest.json."
        notes.append(text)
    return notes


def observations(result: Result) -> list[str]:
    """What the details show beyond the figures (behaviour worth knowing when reading them)."""
    out: list[str] = []
    details = result.get("details", {})
    fleet = details.get("api", {}).get("fleets", {}).get("500", {}).get("ours", {})
    ops = fleet.get("job_operations") or {}
    if ops and fleet.get("jobs"):
        jobs = fleet["jobs"]
        parts = ", ".join(
            f"{name} {fmt(v.get('rate_limit_units', 0) / jobs)}"
            for name, v in sorted(ops.items())
            if v.get("rate_limit_units")
        )
        note = (
            "`delete_runner` is the removal of the finished ephemeral runner, which GitHub has already removed "
            "itself (the emulator answers 404)."
            if (ops.get("delete_runner") or {}).get("rate_limit_units")
            else "No `delete_runner`: GitHub removes an ephemeral runner whose job succeeded, and the manager "
            "sends no DELETE that would be answered 404 (an orphan left anyway is removed by a later reconcile)."
        )
        out.append(f"* Units per job at 500 runners, by operation ({jobs} jobs): {parts}. {note}")
    pickup = details.get("pickup", {})
    surplus = {k: len(v.get("not_cold") or []) for k, v in pickup.items() if v.get("not_cold")}
    if surplus:
        total = sum(surplus.values())
        out.append(
            f"* {total} cold job(s) ({', '.join(f'{k}: {n}' for k, n in surplus.items())}) were taken by a runner that "
            "existed before they were queued: a surplus runner the manager had created for an earlier job (in the "
            "manager logs, a webhook-driven create and a concurrent reconcile both created one for the same pending "
            "job). They are left out of the "
            "cold figures; the surplus goes at the next reconcile as idle-surplus."
        )
    warm = pickup.get("warm", {})
    recorded = warm.get("manager_recorded_pickup") or {}
    if _num(recorded.get("p95")) is not None and _num(warm.get("p95")) is not None:
        out.append(
            f"* The manager's own pickup metric (Redis `pickup_percentiles`, warm pool) says p95 "
            f"{fmt(recorded['p95'], 's')}, the emulator {fmt(warm['p95'], 's')}: the manager times jobs from the "
            "webhook payload's timestamps, which GitHub gives in whole seconds."
        )
    lxd = details.get("lxd", {})
    if lxd.get("storage_driver"):
        out.append(
            f"* LXD storage pool driver: `{lxd['storage_driver']}`"
            + (
                " (every container gets a full copy of the image; a copy-on-write driver such as btrfs or zfs "
                "makes `create` much faster)."
                if lxd["storage_driver"] == "dir"
                else "."
            )
        )
    return out


def _sharing(machine: dict[str, Any], result: dict[str, Any]) -> str:
    """Whether other work shared the machine, from the 1-minute load average at the start and the end."""
    loads = [
        _num((machine.get("load_avg_start") or [None])[0]),
        _num((result.get("load_avg_end") or [None])[0]),
    ]
    cpus = _num(machine.get("cpus")) or 1.0
    busy = any(x is not None and x > 0.5 * cpus for x in loads)
    return "other work shared the machine" if busy else "little else ran on the machine"


def render(result: Result) -> str:
    machine = result.get("machine", {})
    api = result.get("details", {}).get("api", {})
    settings = result.get("details", {}).get("pickup_settings", {})
    lines = [
        "# Benchmarks",
        "",
        "Measured by `benchmarks/run.py` (`tox -e bench`; `--quick` runs in CI so the harness does not rot). "
        "Figures, not assertions: the raw numbers and every sample are in "
        "[`benchmarks/results/latest.json`](benchmarks/results/latest.json). All figures below are from one run.",
        "",
        f"* **Machine**: {machine.get('cpu')}, {machine.get('cpus')} CPUs, {machine.get('memory_gib')} GiB RAM; "
        f"{machine.get('os')}; Python {machine.get('python')}; load average {machine.get('load_avg_start')} at "
        f"the start, {result.get('load_avg_end')} at the end ({_sharing(machine, result)})",
        f"* **Date**: {result.get('date')}",
        f"* **Commit**: `{result.get('commit')}`",
        f"* **Mode**: {'quick (small sizes; not comparable)' if result.get('quick') else 'full'}; "
        f"wall time {result.get('wall_s')} s",
        "",
        "## Figures and targets",
        "",
        "| figure | value | target | status | note |",
        "|---|---:|---|---|---|",
    ]
    lines += [row.render(result) for row in rows()]
    lines += overhead_table(result)
    lines += [
        "",
        "## GitHub API cost against the alternatives (same emulator, same fleet, same run)",
        "",
    ]
    lines += baselines_table(result)
    reconcile_interval = api.get("reconcile_interval_s", 60)
    poll_interval = api.get("poll_interval_s", 30)
    nomad_notes = {
        note
        for fleet in api.get("fleets", {}).values()
        for note in fleet.get("baselines", {}).get("nomadtools", {}).get("notes", [])
    }
    lines += [
        "",
        "How these are counted and extrapolated:",
        "",
        "* World: 2 orgs x 25 repositories; the fleet's runners registered at the two orgs (half each), created by "
        "the manager (Fake backend, memory mode) and made online through the emulator's state (simulated runners, "
        "no process per runner). Steady state: the fleet at its target, no job running.",
        "* Units and requests are counted like `GitHubClient.stats()`: every request sent is a request, every "
        "response but a `304 Not Modified` costs one rate-limit unit. The emulator charges the same per token; "
        "the details in latest.json carry both counts (they agree).",
        f"* Per hour = per `reconcile()` x 3600 / {reconcile_interval:g} s (`reconcile_interval`) + per "
        f"`poll_queued_jobs()` x 3600 / {poll_interval:g} s (`github.poll_interval`), the defaults of the config. "
        f"The baselines run one cycle per {reconcile_interval:g} s.",
        "* This project's steady state costs no unit: every listing is conditional (ETag) and answered `304`. "
        'Ratios divide by max(this project\'s figure, 1), hence "≥".',
        "* Requests (not units): this project sends more requests than (a) and (c): its missed-webhook poll lists "
        "each repository's queued and in-progress runs every 30 s (2 x 50 requests), all answered 304; they cost "
        "no unit but they are load, and GitHub's secondary limit counts them (1 point per GET, 900 a minute).",
        "* Per job, this project spends the units in the table above (JIT registration of the replacement, the "
        "removal of the finished runner, the changed listing pages), once per job whatever the fleet size.",
        "* Rate limits were switched off in the emulator while counting (a real token has 5,000 units/hour, "
        "15,000 for a GitHub App installation: per-runner polling of 500 runners every minute needs 30,000).",
        *[f"* nomadtools: {note}." for note in sorted(nomad_notes)],
        "",
        "## Method",
        "",
        "* Pickup latency is the emulator's `started_at - queued_at` of each job (the job is queued at the "
        "emulator; a runner has taken it). The manager runs as `github-runner-manager --config FILE run` in its own "
        "process (Redis, webhook endpoint, job consumers, reconcile and poll loops); runners are real processes "
        "(Fake backend `local` mode runs the emulator's runner application) or LXD containers from the bench "
        f"runner image. Reconcile every {settings.get('reconcile_interval_warm_s', 5):g} s in the warm-pool runs (it "
        "refills the pool between rounds), at the config's default (60 s) in the cold ones; the missed-webhook poll "
        f"every {settings.get('poll_interval_s', 30):g} s. "
        "Webhooks lost = no delivery reaches the manager; jobs are then queued at even offsets over one poll "
        "interval. Cold jobs taken by a runner that existed before they were queued are left out of the cold "
        "figures (listed as `not_cold` in the details).",
        "* Instance start (the cold target's reference) is the backend's `create` with a fresh JIT config until "
        "that runner is online at the emulator, without the manager, one sample right before each cold job (the "
        "machine is shared, so both see the same load); the cold target is checked percentile by "
        "percentile (pickup p50 against start p50 + 2 s, p95 against start p95 + 2 s). With webhooks lost there is "
        "no target in the design; the table derives one (a job waits at most one poll interval, jittered by up to "
        "+10 %, for the poll).",
        "* Reconcile, create and memory figures use the manager against the emulator and a real redis-server on "
        "loopback; the emulator shares this machine's CPUs, and its own rate is in the table.",
        "* Image builds use `image.build_runner_image` (scripts/build-runner-image.sh), container image only "
        "(this host cannot boot VMs), cold = empty cache (mmdebstrap downloads every package from the host's apt "
        "mirror, so the figure depends on the mirror and the network), warm = same inputs again (the finished root "
        "filesystem is reused; the LXD import remains).",
        "",
        "## Targets missed, and why",
        "",
    ]
    notes = missed(result)
    lines += notes or ["None: every measured figure meets its target."]
    seen = observations(result)
    if seen:
        lines += ["", "## Observations from this run", "", *seen]
    nulls = [
        f"* `{key[: -len('_reason')]}`: {value}"
        for key, value in result.items()
        if key.endswith("_reason") and result.get(key[: -len("_reason")]) is None
    ]
    if nulls:
        lines += ["", "## Not measured in this run", "", *nulls]
    return "\n".join(lines) + "\n"
