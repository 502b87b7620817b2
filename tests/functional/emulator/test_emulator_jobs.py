"""Job routing and the runs/jobs REST views, with simulated runners (no processes)."""

from __future__ import annotations

from collections.abc import Callable

import requests
from emulator_testlib import AUTH, ENTERPRISE, ORG, REPO, TOKEN, wait_until

from github_emulator.testing import RunningEmulator


def status(emu: RunningEmulator, job_id: int) -> str:
    return str(emu.control.get_job(job_id)["status"])


def test_jobs_go_only_to_runners_whose_labels_cover_them(emu: RunningEmulator) -> None:
    emu.control.add_runners(1, org=ORG, labels=["linux", "small"], online=True, name_prefix="small")
    job_id = emu.control.queue_job(REPO, ["self-hosted", "Linux", "LARGE"], ["true"], duration=0.2)
    small_only = emu.control.queue_job(REPO, ["small"], ["true"])
    emu.control.wait_job(small_only)  # the small runner was free and took the job it matches...
    assert status(emu, job_id) == "queued"  # ...but never the one asking for "large"
    emu.control.add_runners(1, org=ORG, labels=["linux", "large"], online=True, name_prefix="large")
    job = emu.control.wait_job(job_id)
    assert job["runner_name"].startswith("large") and job["conclusion"] == "success"
    assert job["runner_group_name"] == "Default"


def test_runner_groups_limit_which_repos_they_serve(emu: RunningEmulator) -> None:
    group = emu.control.add_runner_group(ORG, "lib-only", repos=["acme/lib"])
    emu.control.add_runners(
        1, org=ORG, labels=["grp"], online=True, runner_group_id=group, name_prefix="g"
    )
    for_app = emu.control.queue_job(REPO, ["grp"], ["true"])
    for_lib = emu.control.queue_job("acme/lib", ["grp"], ["true"], runner_group="lib-only")
    job = emu.control.wait_job(for_lib)
    assert job["runner_group_id"] == group and job["runner_group_name"] == "lib-only"
    assert status(emu, for_app) == "queued"
    groups = requests.get(
        f"{emu.url}/orgs/{ORG}/actions/runner-groups",
        params={"visible_to_repository": "app"},
        headers=AUTH,
        timeout=30,
    ).json()
    assert [g["name"] for g in groups["runner_groups"]] == ["Default"]


def test_repo_and_enterprise_runners(emu: RunningEmulator) -> None:
    emu.control.add_runners(1, repo="acme/lib", labels=["only-lib"], online=True)
    elsewhere = emu.control.queue_job(REPO, ["only-lib"], ["true"])
    there = emu.control.queue_job("acme/lib", ["only-lib"], ["true"])
    emu.control.wait_job(there)
    assert status(emu, elsewhere) == "queued"
    emu.control.add_runners(
        1, enterprise=ENTERPRISE, labels=["only-lib"], online=True, name_prefix="ent"
    )
    assert emu.control.wait_job(elsewhere)["runner_name"].startswith("ent")


def test_runs_and_jobs_rest_follow_the_job(emu: RunningEmulator) -> None:
    job_id = emu.control.queue_job(REPO, ["self-hosted", "rest"], ["true"], duration=30)
    runs_url = f"{emu.url}/repos/{REPO}/actions/runs"
    queued = requests.get(runs_url, params={"status": "queued"}, headers=AUTH, timeout=30).json()
    (run,) = queued["workflow_runs"]
    job_url = f"{emu.url}/repos/{REPO}/actions/jobs/{job_id}"
    assert requests.get(job_url, headers=AUTH, timeout=30).json()["runner_name"] is None
    emu.control.add_runners(1, org=ORG, labels=["rest"], online=True, name_prefix="rest")
    emu.control.wait_job(job_id, status="in_progress")
    job = requests.get(job_url, headers=AUTH, timeout=30).json()
    assert job["status"] == "in_progress" and job["runner_name"].startswith("rest")
    running = requests.get(
        runs_url, params={"status": "in_progress"}, headers=AUTH, timeout=30
    ).json()
    assert [r["id"] for r in running["workflow_runs"]] == [run["id"]]
    assert requests.get(run["jobs_url"], headers=AUTH, timeout=30).json()["jobs"][0]["id"] == job_id
    runs = requests.get(runs_url, headers=AUTH, timeout=30).json()
    cancel = requests.post(f"{runs_url}/{run['id']}/cancel", headers=AUTH, timeout=30)
    assert cancel.status_code == 202
    assert emu.control.wait_job(job_id)["conclusion"] == "cancelled"
    assert runs["total_count"] == 1


def test_reset_restores_the_start_up_world(
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    emu = emulator_factory()
    emu.control.add_org("other")
    emu.control.add_runners(3, org=ORG)
    emu.control.queue_job(REPO, ["self-hosted"], ["true"])
    emu.control.fault(route="*", status=500)
    emu.control.reset()
    assert emu.state.runners == {} and emu.state.jobs == {}
    assert "other" not in emu.state.orgs
    resp = requests.get(f"{emu.url}/orgs/{ORG}/actions/runners", headers=AUTH, timeout=30)
    assert resp.status_code == 200 and resp.json()["total_count"] == 0
    assert emu.control.stats()["requests_total"] == 1
    emu.control.reset(full=True)
    assert (
        requests.get(f"{emu.url}/orgs/{ORG}/actions/runners", headers=AUTH, timeout=30).status_code
        == 401
    )
    assert TOKEN not in str(emu.control.stats())


def test_simulated_runners_stay_online_and_count(emu: RunningEmulator) -> None:
    emu.control.add_runners(5, org=ORG, online=True, ephemeral=False)
    ids = [emu.control.queue_job(REPO, ["self-hosted"], ["true"]) for _ in range(10)]
    for job_id in ids:
        emu.control.wait_job(job_id)
    wait_until(lambda: emu.control.stats()["runners"] == {"total": 5, "online": 5, "busy": 0})
    assert emu.control.stats()["jobs"] == {"completed": 10}
