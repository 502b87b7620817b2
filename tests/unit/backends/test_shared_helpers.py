"""The helpers the cloud backends share (backends/base.py and backends/_common.py), without any provider."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from github_runner_manager.backends._common import (
    ReadableFile,
    SizedType,
    by_size,
    parse_timestamp,
    size_table,
    smallest_fit,
)
from github_runner_manager.backends.base import (
    AuthError,
    Backend,
    BackendConfigError,
    BackendError,
    BackendSettings,
    CapacityError,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    MissingDependencyError,
    error_for_codes,
    missing_dependency,
    translated_errors,
)
from github_runner_manager.units import GIB


class _ListOnly(Backend):
    """A backend holding a fixed list of instances; its "provider" raises lookup errors."""

    name = "memory"
    provider_errors = (LookupError,)

    def __init__(self, instances: builtins.list[Instance], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.instances = instances

    def create(self, spec: InstanceSpec) -> Instance:
        raise NotImplementedError

    def get(self, name: str) -> Instance:
        raise NotImplementedError

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> builtins.list[Instance]:
        return self._select(self.instances, prefix, tags)

    def delete(self, name: str) -> None:
        raise NotImplementedError


def _instance(name: str, **tags: str) -> Instance:
    return Instance(name=name, state=InstanceState.RUNNING, tags=dict(tags))


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["Quota"], CapacityError),
        (["Denied"], AuthError),
        (["Gone"], InstanceNotFound),
        (["Other"], BackendError),
        ([], BackendError),
        (["Denied", "Quota", "Gone"], CapacityError),
        (["Gone", "Denied"], AuthError),
    ],
)
def test_error_for_codes_ranks_capacity_then_auth_then_not_found(
    codes: builtins.list[str], expected: type[BackendError]
) -> None:
    error = error_for_codes(
        codes, "the text", capacity={"Quota"}, auth={"Denied"}, not_found={"Gone"}
    )
    assert type(error) is expected and str(error) == "the text"


def test_translated_errors_maps_passes_and_unchains() -> None:
    def translate(exc: Exception) -> BackendError:
        return CapacityError(f"full: {exc}")

    with pytest.raises(CapacityError, match="full: 'k'") as caught:
        with translated_errors((KeyError,), translate):
            raise KeyError("k")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    contract = InstanceNotFound("already a contract error")
    with pytest.raises(InstanceNotFound) as passed, translated_errors((Exception,), translate):
        raise contract
    assert passed.value is contract
    with pytest.raises(ZeroDivisionError), translated_errors((KeyError,), translate):
        _ = 1 / 0


def test_a_backend_translates_only_its_provider_errors() -> None:
    backend = _ListOnly([])
    with pytest.raises(BackendError, match=r"^memory: listing: 'k'$") as caught:
        with backend._errors("listing"):
            raise KeyError("k")
    assert type(caught.value) is BackendError
    with pytest.raises(OSError, match="socket"), backend._errors("listing"):
        raise OSError("socket")


def test_select_and_check_room_follow_the_prefix_and_tags() -> None:
    backend = _ListOnly(
        [
            _instance("ghr-a", team="x"),
            _instance("ghr-b", team="y"),
            _instance("other-c", team="x"),
        ],
        prefix="ghr",
    )
    assert [i.name for i in backend.list()] == ["ghr-a", "ghr-b"]
    assert [i.name for i in backend.list(tags={"team": "x"})] == ["ghr-a"]
    assert [i.name for i in backend.list(prefix="")] == ["ghr-a", "ghr-b", "other-c"]
    backend._check_room(0, "things")
    backend._check_room(3, "things")
    with pytest.raises(
        CapacityError, match=r"^memory: 2 things with prefix 'ghr' reach max_instances=2$"
    ):
        backend._check_room(2, "things")


def test_missing_dependency_names_the_extra_or_says_reinstall() -> None:
    error = missing_dependency("aws", "boto3", extra="aws")
    assert isinstance(error, MissingDependencyError)
    assert str(error) == (
        "backend 'aws' needs the 'boto3' library: pip install 'github-runner-manager[aws]'"
    )
    assert str(missing_dependency("fake", "x", extra=None)).endswith(": reinstall the package")


class _Row(SizedType):
    """A provider's row type."""


def test_size_tables_sort_and_pick_the_smallest_fit() -> None:
    table = by_size(size_table(_Row, ("big", 8, 32), ("small", 2, 4)), empty="no rows")
    assert [r.name for r in table] == ["small", "big"] and table[1].memory == 32 * GIB
    pick = {"setting": "backends.x.rows", "what": "row", "override": "row"}
    assert smallest_fit(table, 2, 4 * GIB, **pick) == "small"
    assert smallest_fit(table, 3, GIB, **pick) == "big"
    with pytest.raises(
        BackendConfigError,
        match=r"^backends\.x\.rows: no row has 9 CPUs and 1 GiB; add a bigger one or set row$",
    ):
        smallest_fit(table, 9, GIB, **pick)
    with pytest.raises(ValueError, match="no rows"):
        by_size([], empty="no rows")
    with pytest.raises(ValidationError, match="instance of _Row"):
        _Row.model_validate("small")


class _FileSettings(BackendSettings):
    path: ReadableFile | None = None


def test_readable_file_names_the_missing_file(tmp_path: Path) -> None:
    there = tmp_path / "there"
    there.write_text("x")
    assert _FileSettings(path=there).path == there
    assert _FileSettings().path is None
    with pytest.raises(ValidationError) as caught:
        _FileSettings(path=tmp_path / "missing")
    (error,) = caught.value.errors()
    assert error["loc"] == ("path",)
    assert error["msg"] == f"Value error, {str(tmp_path / 'missing')!r} is not a readable file"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:34:56Z", 1714566896.0),
        ("2024-05-01T12:34:56.123456789Z", 1714566896.123456),
        ("2024-05-01T14:34:56.5+02:00", 1714566896.5),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_parse_timestamp(text: str | None, expected: float | None) -> None:
    assert parse_timestamp(text) == expected
