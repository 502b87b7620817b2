"""Contract: every operation in GitHub's description answers on the emulator with a documented
status and a body that validates against the documented schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from emulator_testlib import (
    AUTH,
    ENTERPRISE,
    ORG,
    REPO,
    TOKEN,
    oas30_to_jsonschema,
    schema_errors,
    spec_dir_or_none,
)

from github_emulator.testing import RunningEmulator, start_emulator


def _operations() -> list[dict[str, Any]]:
    found = spec_dir_or_none()
    if found is None:
        return []
    return json.loads((Path(found) / "github-runners-api.json").read_text())["operations"]


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """One emulator with a completed job, a custom runner group and the ids the paths need."""
    emu = start_emulator(
        orgs=[ORG],
        repos=[REPO, "acme/lib"],
        enterprises=[ENTERPRISE],
        tokens=[TOKEN],
        secondary_limit=0,
    )
    control = emu.control
    group_id = control.add_runner_group(ORG, "gpu", repos=[REPO])
    control.add_runners(1, org=ORG, online=True, name_prefix="sim")
    job_id = control.queue_job(REPO, ["self-hosted"], ["echo hi"])
    job = control.wait_job(job_id, timeout=10)
    yield {"emu": emu, "group_id": group_id, "job_id": job_id, "run_id": job["run_id"]}
    emu.stop()


def _scope(path: str) -> tuple[str, str]:
    if path.startswith("/repos/"):
        return "repo", REPO
    if path.startswith("/enterprises/"):
        return "enterprise", ENTERPRISE
    return "org", ORG


def _prepare(op: dict[str, Any], world: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Path parameters and request body for ``op``, creating what it acts on."""
    emu: RunningEmulator = world["emu"]
    owner, repo = REPO.split("/")
    params: dict[str, Any] = {
        "owner": owner,
        "repo": repo,
        "org": ORG,
        "enterprise": ENTERPRISE,
        "runner_group_id": world["group_id"],
        "run_id": world["run_id"],
        "job_id": world["job_id"],
    }
    body: Any = None
    if "{runner_id}" in op["path"]:
        kind, scope = _scope(op["path"])
        runner = emu.state.create_runner(
            kind, scope, f"contract-{op['operationId'].split('/')[-1]}", ["self-hosted", "custom-a"]
        )
        params["runner_id"] = runner.id
        params["name"] = "custom-a"
    if op["operationId"].startswith("actions/generate-runner-jitconfig"):
        body = {
            "name": f"jit-{_scope(op['path'])[0]}",
            "runner_group_id": 1,
            "labels": ["self-hosted", "linux", "contract"],
            "work_folder": "_work",
        }
    elif op["method"] in ("POST", "PUT") and op["path"].endswith("/labels"):
        body = {"labels": ["gpu", "accelerated"]}
    return params, body


def _check(op: dict[str, Any], resp: requests.Response) -> None:
    status = str(resp.status_code)
    assert status in op["responses"], (
        f"{op['operationId']}: status {status} is not documented ({sorted(op['responses'])}): "
        f"{resp.text[:300]}"
    )
    content = op["responses"][status].get("content") or {}
    if not content:
        assert resp.content == b"", f"{op['operationId']}: {status} should have no body"
        return
    schema = oas30_to_jsonschema(content["application/json"]["schema"])
    errors = schema_errors(schema, resp.json())
    assert not errors, f"{op['operationId']} {status}: {errors[:5]}"


def test_the_description_has_44_operations(api_spec: dict[str, Any]) -> None:
    assert len(api_spec["operations"]) == 44 == len(OPERATIONS)


@pytest.mark.parametrize("op", OPERATIONS, ids=[o["operationId"] for o in OPERATIONS])
def test_operation_matches_its_description(op: dict[str, Any], world: dict[str, Any]) -> None:
    emu: RunningEmulator = world["emu"]
    params, body = _prepare(op, world)
    url = emu.url + op["path"].format(**params)
    before = emu.control.stats()["requests"].get(op["operationId"], 0)
    resp = requests.request(op["method"], url, headers=AUTH, json=body, timeout=30)
    _check(op, resp)
    assert resp.status_code < 400, resp.text
    # The request was routed to this very operation, and carries GitHub's rate-limit headers.
    assert emu.control.stats()["requests"][op["operationId"]] == before + 1
    for header in (
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-used",
    ):
        assert header in resp.headers
    if op["method"] == "GET":
        etag = resp.headers["ETag"]
        again = requests.get(url, headers={**AUTH, "If-None-Match": etag}, timeout=30)
        assert again.status_code == 304
        if "304" in op["responses"]:
            _check(op, again)


def _op(api_spec: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return next(o for o in api_spec["operations"] if o["operationId"] == operation_id)


def test_documented_error_responses_validate(
    api_spec: dict[str, Any], world: dict[str, Any]
) -> None:
    emu: RunningEmulator = world["emu"]
    base = emu.url
    jit = _op(api_spec, "actions/generate-runner-jitconfig-for-org")
    path = f"{base}/orgs/{ORG}/actions/runners/generate-jitconfig"
    body = {"name": "dup", "runner_group_id": 1, "labels": ["self-hosted"]}
    assert requests.post(path, headers=AUTH, json=body, timeout=30).status_code == 201
    conflict = requests.post(path, headers=AUTH, json=body, timeout=30)
    assert conflict.status_code == 409
    _check(jit, conflict)
    no_group = requests.post(
        path, headers=AUTH, json={**body, "name": "x", "runner_group_id": 999}, timeout=30
    )
    assert no_group.status_code == 404
    _check(jit, no_group)
    bad_labels = requests.post(
        path, headers=AUTH, json={**body, "name": "y", "labels": []}, timeout=30
    )
    assert bad_labels.status_code == 422
    _check(jit, bad_labels)

    runner = emu.state.create_runner("org", ORG, "labelled", ["self-hosted", "custom-a"])
    remove = _op(api_spec, "actions/remove-custom-label-from-self-hosted-runner-for-org")
    missing = requests.delete(
        f"{base}/orgs/{ORG}/actions/runners/{runner.id}/labels/nope", headers=AUTH, timeout=30
    )
    assert missing.status_code == 404
    _check(remove, missing)
    read_only = requests.delete(
        f"{base}/orgs/{ORG}/actions/runners/{runner.id}/labels/self-hosted",
        headers=AUTH,
        timeout=30,
    )
    assert read_only.status_code == 422
    _check(remove, read_only)

    # GitHub refuses to delete a runner that is running a job.
    delete = _op(api_spec, "actions/delete-self-hosted-runner-from-org")
    busy = emu.state.create_runner(
        "org", ORG, "busy-one", ["self-hosted", "busy-only"], simulated=True
    )
    job_id = emu.control.queue_job("acme/lib", ["busy-only"], ["sleep 1"], duration=30)
    emu.control.wait_job(job_id, status="in_progress", timeout=10)
    refused = requests.delete(
        f"{base}/orgs/{ORG}/actions/runners/{busy.id}", headers=AUTH, timeout=30
    )
    assert refused.status_code == 422
    _check(delete, refused)
    assert "still running a job" in refused.json()["message"]
    emu.control.cancel_job(job_id)
