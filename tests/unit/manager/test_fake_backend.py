"""The fake backend in memory mode: the contract, failure injection and the state file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from github_runner_manager.backends.base import (
    TAG_GROUP,
    TAG_OWNER,
    TAG_PREFIX,
    TAG_UNIT,
    BackendConfigError,
    BackendError,
    CapacityError,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
)
from github_runner_manager.backends.fake import FakeBackend
from github_runner_manager.backends.registry import create_backend


def spec(name: str, unit: str = "u0", group: str = "small") -> InstanceSpec:
    return InstanceSpec(
        name=name,
        group=group,
        image="img",
        cpu=2,
        memory=1 << 30,
        disk=1 << 30,
        user_data="#cloud-config\n",
        jit_config="jit-secret",
        tags={TAG_PREFIX: "ghr", TAG_UNIT: unit, TAG_GROUP: group, TAG_OWNER: "acme"},
    )


def test_registry_builds_the_fake_backend() -> None:
    backend = create_backend("fake", {"create_latency": "10ms"}, prefix="ghr")
    assert isinstance(backend, FakeBackend)
    assert backend.cfg.create_latency == pytest.approx(0.01)


def test_create_get_list_delete() -> None:
    backend = FakeBackend({}, prefix="ghr")
    created = backend.create(spec("ghr-small-aaaaaa"))
    assert created.state is InstanceState.RUNNING
    assert created.tags[TAG_UNIT] == "u0"
    assert backend.get("ghr-small-aaaaaa").name == "ghr-small-aaaaaa"
    backend.create(spec("ghr-large-bbbbbb", unit="u1", group="large"))
    backend.create(spec("other-x", unit="u0"))
    assert {i.name for i in backend.list()} == {"ghr-small-aaaaaa", "ghr-large-bbbbbb"}
    assert [i.name for i in backend.list(tags={TAG_UNIT: "u1"})] == ["ghr-large-bbbbbb"]
    assert [i.name for i in backend.list(prefix="other")] == ["other-x"]
    backend.delete("ghr-small-aaaaaa")
    backend.delete("ghr-small-aaaaaa")  # idempotent
    with pytest.raises(InstanceNotFound):
        backend.get("ghr-small-aaaaaa")
    assert backend.remove_all() == 1
    assert backend.list() == []


def test_duplicate_name_is_refused() -> None:
    backend = FakeBackend({}, prefix="ghr")
    backend.create(spec("ghr-small-aaaaaa"))
    with pytest.raises(BackendError):
        backend.create(spec("ghr-small-aaaaaa"))


def test_capacity_raises_capacity_error() -> None:
    backend = FakeBackend({"capacity": 2}, prefix="ghr")
    backend.create(spec("ghr-small-1"))
    backend.create(spec("ghr-small-2"))
    with pytest.raises(CapacityError):
        backend.create(spec("ghr-small-3"))
    backend.delete("ghr-small-1")
    backend.create(spec("ghr-small-3"))


def test_fail_rate_is_reproducible_with_a_seed() -> None:
    def outcomes() -> list[bool]:
        backend = FakeBackend({"fail_rate": 0.5, "seed": 7}, prefix="ghr")
        result = []
        for n in range(20):
            try:
                backend.create(spec(f"ghr-small-{n}"))
                result.append(True)
            except BackendError as exc:
                assert not isinstance(exc, CapacityError)
                result.append(False)
        return result

    first = outcomes()
    assert first == outcomes()
    assert 0 < sum(first) < 20


def test_fail_rate_one_always_fails_and_leaves_nothing() -> None:
    backend = FakeBackend({"fail_rate": 1}, prefix="ghr")
    with pytest.raises(BackendError):
        backend.create(spec("ghr-small-x"))
    assert backend.list() == []


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(BackendConfigError, match=r"backends\.fake\.fail_rate"):
        FakeBackend({"fail_rate": 2})
    with pytest.raises(BackendConfigError, match=r"backends\.fake\.create_latency"):
        FakeBackend({"create_latency": "soon"})
    with pytest.raises(BackendConfigError, match=r"backends\.fake\.colour"):
        FakeBackend({"colour": "blue"})
    with pytest.raises(BackendConfigError, match=r"backends\.fake\.mode"):
        FakeBackend({"mode": "cloud"})


def test_creates_run_in_parallel_with_latency() -> None:
    backend = FakeBackend({"create_latency": "0.2s"}, prefix="ghr")
    start = time.monotonic()
    threads = [
        threading.Thread(target=backend.create, args=(spec(f"ghr-small-{n}"),)) for n in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start < 1.5
    assert len(backend.list()) == 10


def test_pending_instance_is_listed_during_create() -> None:
    backend = FakeBackend({"create_latency": "0.3s"}, prefix="ghr")
    thread = threading.Thread(target=backend.create, args=(spec("ghr-small-p"),))
    thread.start()
    deadline = time.monotonic() + 2
    seen = []
    while time.monotonic() < deadline and not seen:
        seen = backend.list()
    thread.join()
    assert seen and seen[0].state is InstanceState.PENDING
    assert backend.get("ghr-small-p").state is InstanceState.RUNNING


def test_delete_during_create_wins() -> None:
    backend = FakeBackend({"create_latency": "0.3s"}, prefix="ghr")
    errors: list[Exception] = []

    def create() -> None:
        try:
            backend.create(spec("ghr-small-d"))
        except BackendError as exc:
            errors.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    while not backend.list():
        time.sleep(0.01)
    backend.delete("ghr-small-d")
    thread.join()
    assert errors and backend.list() == []


def test_state_file_survives_a_new_backend_object(tmp_path: Path) -> None:
    state = tmp_path / "fake.json"
    first = FakeBackend({"state_file": str(state)}, prefix="ghr")
    first.create(spec("ghr-small-s1"))
    first.create(spec("ghr-small-s2"))
    second = FakeBackend({"state_file": str(state)}, prefix="ghr")
    assert {i.name for i in second.list()} == {"ghr-small-s1", "ghr-small-s2"}
    second.delete("ghr-small-s1")
    assert [i.name for i in first.list()] == ["ghr-small-s2"]


def test_stop_instance_in_memory_mode() -> None:
    backend = FakeBackend({}, prefix="ghr")
    backend.create(spec("ghr-small-z"))
    backend.stop_instance("ghr-small-z")
    assert backend.get("ghr-small-z").state is InstanceState.STOPPED
