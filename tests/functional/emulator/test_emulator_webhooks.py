"""workflow_job webhooks: schema-valid payloads, GitHub's signatures, deliveries and redelivery."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import requests
from emulator_testlib import AUTH, ORG, REPO, HookReceiver

from github_emulator import signature_256
from github_emulator.testing import RunningEmulator


def test_signature_matches_githubs_published_test_vector(webhook_spec: dict[str, Any]) -> None:
    vector = webhook_spec["signature"]["test_vector"]
    assert (
        signature_256(vector["secret"], vector["payload"].encode()) == vector["X-Hub-Signature-256"]
    )


def test_lifecycle_deliveries_to_org_and_repo_hooks(
    emu: RunningEmulator, hook_receiver: HookReceiver
) -> None:
    org_hook = emu.control.add_hook(hook_receiver.url, "org-secret", org=ORG)
    repo_hook = emu.control.add_hook(hook_receiver.url, None, repo=REPO)
    emu.control.add_runners(1, org=ORG, labels=["self-hosted", "linux", "sim"], online=True)
    job_id = emu.control.queue_job(REPO, ["self-hosted", "sim"], ["true", "false"], duration=0.1)
    assert emu.control.wait_job(job_id)["conclusion"] == "success"
    received = hook_receiver.wait_for(6)
    by_hook: dict[str, list[str]] = {}
    for entry in received:
        by_hook.setdefault(entry["headers"]["X-Github-Hook-Id"], []).append(
            entry["payload"]["action"]
        )
    assert by_hook == {
        str(org_hook): ["queued", "in_progress", "completed"],
        str(repo_hook): ["queued", "in_progress", "completed"],
    }
    for entry in received:
        headers = entry["headers"]
        if headers["X-Github-Hook-Id"] == str(org_hook):
            assert headers["X-Hub-Signature-256"] == signature_256("org-secret", entry["body"])
            assert headers["X-Github-Hook-Installation-Target-Type"] == "organization"
        else:
            assert "X-Hub-Signature-256" not in headers  # no secret, no signature (as GitHub)
            assert headers["X-Github-Hook-Installation-Target-Type"] == "repository"
    queued = hook_receiver.payloads("queued")[0]["workflow_job"]
    assert queued["runner_name"] is None and queued["labels"] == ["self-hosted", "sim"]
    completed = hook_receiver.payloads("completed")[0]
    assert completed["workflow_job"]["conclusion"] == "success"
    assert completed["repository"]["full_name"] == REPO
    assert completed["organization"]["login"] == ORG
    assert completed["workflow_job"]["url"].startswith(emu.url)
    assert emu.control.wait_deliveries()
    assert emu.control.stats()["webhook_deliveries"] == 6


def test_waiting_and_cancelled_jobs(emu: RunningEmulator, hook_receiver: HookReceiver) -> None:
    emu.control.add_hook(hook_receiver.url, "s", org=ORG)
    waiting = emu.control.queue_job(REPO, ["self-hosted"], ["true"], waiting=True)
    assert emu.control.get_job(waiting)["status"] == "waiting"
    emu.control.approve_job(waiting)
    assert emu.control.get_job(waiting)["status"] == "queued"
    emu.control.cancel_job(waiting)
    job = emu.control.get_job(waiting)
    assert (job["status"], job["conclusion"]) == ("completed", "cancelled")
    received = hook_receiver.wait_for(3)
    assert [e["payload"]["action"] for e in received] == ["waiting", "queued", "completed"]
    assert received[-1]["payload"]["workflow_job"]["runner_id"] is None


def test_deliveries_are_listed_and_redelivered(
    emu: RunningEmulator, hook_receiver: HookReceiver
) -> None:
    hook_id = emu.control.add_hook(hook_receiver.url, "s3cret", org=ORG)
    hook_receiver.status = 500  # the receiver is down: GitHub records the failure
    emu.control.queue_job(REPO, ["self-hosted"], ["true"])
    hook_receiver.wait_for(1)
    assert emu.control.wait_deliveries()
    base = f"{emu.url}/orgs/{ORG}/hooks/{hook_id}/deliveries"
    (item,) = requests.get(base, headers=AUTH, timeout=30).json()
    assert item["status_code"] == 500 and item["status"] == "Invalid HTTP Response: 500"
    assert (
        item["event"] == "workflow_job"
        and item["action"] == "queued"
        and item["redelivery"] is False
    )
    detail = requests.get(f"{base}/{item['id']}", headers=AUTH, timeout=30).json()
    assert detail["request"]["payload"]["action"] == "queued"
    assert detail["request"]["headers"]["X-GitHub-Delivery"] == item["guid"]
    assert "s3cret" not in str(detail)

    # The manager recovers: find failed deliveries, ask for another attempt.
    hook_receiver.status = 200
    failed = requests.get(base, params={"status": "failure"}, headers=AUTH, timeout=30).json()
    assert [d["id"] for d in failed] == [item["id"]]
    attempt = requests.post(f"{base}/{item['id']}/attempts", headers=AUTH, timeout=30)
    assert attempt.status_code == 202
    first, again = hook_receiver.wait_for(2)
    assert again["body"] == first["body"]
    assert again["headers"]["X-Github-Delivery"] == first["headers"]["X-Github-Delivery"]
    assert emu.control.wait_deliveries()
    newest, oldest = requests.get(base, headers=AUTH, timeout=30).json()
    assert (
        newest["redelivery"] is True
        and newest["id"] != oldest["id"]
        and newest["status_code"] == 200
    )
    assert oldest["id"] == item["id"]

    # The same endpoints exist for repository hooks, with cursor pagination.
    repo_hook = emu.control.add_hook(hook_receiver.url, None, repo=REPO)
    for _ in range(3):
        emu.control.queue_job(REPO, ["self-hosted"], ["true"])
    assert emu.control.wait_deliveries()
    url = f"{emu.url}/repos/{REPO}/hooks/{repo_hook}/deliveries"
    page = requests.get(url, params={"per_page": 2}, headers=AUTH, timeout=30)
    assert len(page.json()) == 2
    rest = requests.get(page.links["next"]["url"], headers=AUTH, timeout=30).json()
    assert len(rest) == 1 and rest[0]["id"] < page.json()[-1]["id"]
    hooks = requests.get(f"{emu.url}/repos/{REPO}/hooks", headers=AUTH, timeout=30).json()
    assert [h["id"] for h in hooks] == [repo_hook]


def test_a_slow_receiver_never_blocks_the_api(
    emulator_factory: Callable[..., RunningEmulator], hook_receiver: HookReceiver
) -> None:
    emu = emulator_factory(hook_timeout=2.0)
    emu.control.add_hook(hook_receiver.url, "s", org=ORG)
    hook_receiver.delay = 3.0
    emu.control.queue_job(REPO, ["self-hosted"], ["true"])
    # The API answered while the delivery is still waiting for the receiver (or its timeout).
    (pending,) = emu.control.deliveries()
    assert pending["status"] == "pending"
    assert requests.get(f"{emu.url}/orgs/{ORG}/actions/runners", headers=AUTH, timeout=30).ok
    assert emu.control.wait_deliveries()
    (delivery,) = emu.control.deliveries()
    assert (delivery["status"], delivery["status_code"]) == ("timed out", 0)
    assert emu.control.stats()["webhook_deliveries_failed"] == 1


def test_signatures_verify_with_the_documented_recipe(
    emu: RunningEmulator, hook_receiver: HookReceiver
) -> None:
    secret = "It's a Secret to Everybody"
    emu.control.add_hook(hook_receiver.url, secret, repo=REPO)
    emu.control.queue_job(REPO, ["self-hosted"], ["true"])
    (entry,) = hook_receiver.wait_for(1)
    expected = "sha256=" + hmac.new(secret.encode(), entry["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(entry["headers"]["X-Hub-Signature-256"], expected)
    tampered = entry["body"].replace(b"queued", b"complet", 1)
    assert not hmac.compare_digest(signature_256(secret, tampered), expected)
