"""Pieces several cloud backends build their settings and instances from.

* :class:`SizedType` -- a row of a flavor table (a provider's machine type, its CPUs and memory), with
  :func:`size_table` to write the default table, :func:`by_size` to sort a configured one and
  :func:`smallest_fit` to pick the smallest row that fits a runner group (or name the settings to
  change when none does).
* :data:`ReadableFile` -- a settings path that must name an existing file.
* :func:`parse_timestamp` -- an ISO 8601 / RFC 3339 time as the providers give it, in epoch seconds.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from github_runner_manager.backends.base import BackendConfigError
from github_runner_manager.units import GIB, parse_size

#: A size in bytes, given as a number or a text such as ``4GiB``.
Size = Annotated[int, BeforeValidator(parse_size)]


class SizedType(BaseModel):
    """One row of a flavor table: a machine type and what it offers (subclassed per provider)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    cpu: int = Field(gt=0)
    memory: Size


RowT = TypeVar("RowT", bound=SizedType)


def size_table(row: type[RowT], *rows: tuple[str, int, int]) -> list[RowT]:
    """Rows of a table from ``(name, CPUs, GiB of memory)`` triples."""
    return [row.model_validate({"name": n, "cpu": c, "memory": f"{m}GiB"}) for n, c, m in rows]


def by_size(rows: list[RowT], *, empty: str) -> list[RowT]:
    """A configured table sorted smallest first; ``ValueError(empty)`` when it has no row."""
    if not rows:
        raise ValueError(empty)
    return sorted(rows, key=lambda t: (t.cpu, t.memory))


def smallest_fit(
    rows: Iterable[SizedType], cpu: int, memory: int, *, setting: str, what: str, override: str
) -> str:
    """The name of the first row (of a table sorted by size) with at least ``cpu`` and ``memory``.

    Raises:
        BackendConfigError: no row is big enough; the message names the table's ``setting`` (rows
            are ``what``) and the ``override`` setting that names one type for every group.
    """
    for row in rows:
        if row.cpu >= cpu and row.memory >= memory:
            return row.name
    raise BackendConfigError(
        f"{setting}: no {what} has {cpu} CPUs and {memory // GIB} GiB; "
        f"add a bigger one or set {override}"
    )


def _readable_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return path


#: A settings path (credentials, clouds.yaml, CA bundle) that must name an existing file.
ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


def parse_timestamp(text: str | None) -> float | None:
    """Epoch seconds for an ISO 8601 time (``Z`` or an offset); None for no or unreadable text.

    Fractions beyond microseconds (LXD gives nanoseconds) are cut: older Pythons refuse them.
    """
    if not text:
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(trimmed).timestamp()
    except ValueError:
        return None
