"""The backend contract: the small, versioned interface every machine provider implements.

A backend knows nothing about GitHub or Redis. It creates an instance from an :class:`InstanceSpec`,
finds instances by the manager's name prefix and tags (so orphans are found without any database),
and deletes them idempotently. Provider states are mapped onto :class:`InstanceState` through a table
in each backend; provider extras go into :attr:`Instance.extra`.

The manager decides on error *classes*, never on message text:

* :class:`AuthError` -- credentials rejected; the operator must fix them (charm: blocked).
* :class:`CapacityError` -- quota or capacity exhausted; try the next backend of the group.
* :class:`InstanceNotFound` -- the instance does not exist (``get`` only; ``delete`` is idempotent).
* :class:`BackendConfigError` -- the backend's settings are invalid; the message names the field.
* :class:`MissingDependencyError` -- the optional client library is not installed; names the extra.

What implementations share lives here too: a backend lists its client library's exception classes
in :attr:`Backend.provider_errors` and classifies them in :meth:`Backend._translate` (for error codes,
with :func:`error_for_codes`), then wraps provider calls in ``with self._errors(action):``;
``list`` keeps what :meth:`Backend._select` keeps, and ``create`` honours ``max_instances`` through
:meth:`Backend._check_room`. Settings and flavor-table pieces are in ``backends/_common.py``.
"""

from __future__ import annotations

import abc
import builtins
import enum
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

CONTRACT_VERSION = 1

#: Tag keys every backend stores on every instance (as labels, user.* keys, tags or custom fields).
TAG_PREFIX = "ghrm-prefix"
TAG_UNIT = "ghrm-unit"
TAG_GROUP = "ghrm-group"
TAG_OWNER = "ghrm-owner"


class BackendError(Exception):
    """Root of every backend error."""


class AuthError(BackendError):
    """The provider rejected the credentials."""


class CapacityError(BackendError):
    """The provider is out of capacity or quota; another backend may take the runner."""


class InstanceNotFound(BackendError):  # noqa: N818 - domain name kept from the design
    """The instance does not exist."""


class BackendConfigError(BackendError):
    """The backend's settings are invalid; the message names the field and the fix."""


class MissingDependencyError(BackendError):
    """The backend's client library is not installed; the message names the pip extra."""


def missing_dependency(
    backend: str, library: str | None, *, extra: str | None
) -> MissingDependencyError:
    """The error for a backend whose client ``library`` is missing: it names the pip ``extra``."""
    hint = f"pip install 'github-runner-manager[{extra}]'" if extra else "reinstall the package"
    return MissingDependencyError(f"backend {backend!r} needs the {library!r} library: {hint}")


def error_for_codes(
    codes: Collection[str],
    text: str,
    *,
    capacity: Collection[str] = (),
    auth: Collection[str] = (),
    not_found: Collection[str] = (),
) -> BackendError:
    """The contract error for a provider's error ``codes``: capacity before auth before not-found."""
    for kinds, cls in ((capacity, CapacityError), (auth, AuthError), (not_found, InstanceNotFound)):
        if any(code in kinds for code in codes):
            return cls(text)
    return BackendError(text)


@contextmanager
def translated_errors(
    catch: tuple[type[Exception], ...], translate: Callable[[Exception], BackendError]
) -> Iterator[None]:
    """Let contract errors through and raise what ``translate`` makes of an exception in ``catch``.

    The contract error is raised without the provider's exception chained to it (its text is in the
    message); any other exception propagates unchanged.
    """
    try:
        yield
    except BackendError:
        raise
    except catch as exc:
        raise translate(exc) from None


class InstanceState(enum.Enum):
    """Provider-neutral lifecycle of an instance."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    DELETING = "deleting"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class InstanceSpec:
    """What the manager asks a backend to create.

    Attributes:
        name: full instance name ``{prefix}-{group}-{random}``; also the GitHub runner name.
        group: runner group (flavor) name.
        image: image alias/name/id in the backend's terms.
        cpu: virtual CPUs.
        memory: bytes.
        disk: bytes (root disk).
        user_data: rendered cloud-init/user-data text; it carries the runner's JIT config, never the token.
        jit_config: the runner's encoded JIT config alone, for backends that pass it as a key
            (LXD ``user.jitconfig``, Docker env) or run the runner app directly (fake ``local`` mode).
        tags: key/value tags to store on the instance (always includes the TAG_* keys).
        extra: backend-specific settings from the group (e.g. an instance type override).
    """

    name: str
    group: str
    image: str
    cpu: int
    memory: int
    disk: int
    user_data: str
    jit_config: str
    tags: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Instance:
    """A machine as the backend sees it."""

    name: str
    state: InstanceState
    tags: dict[str, str]
    created_at: float | None = None
    address: str | None = None
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class BackendSettings(BaseModel):
    """Base for each backend's settings model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Backend(abc.ABC):
    """One machine provider. Implementations must be safe to call from several threads."""

    #: registry name, e.g. ``"lxd"``.
    name: ClassVar[str] = ""
    #: pydantic model validating this backend's settings mapping.
    settings_model: ClassVar[type[BackendSettings]] = BackendSettings
    #: the client library's exception classes that :meth:`_errors` hands to :meth:`_translate`.
    provider_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        self.settings = self.parse_settings(settings or {})
        self.prefix = prefix

    @classmethod
    def parse_settings(cls, settings: Mapping[str, Any]) -> BackendSettings:
        """Validate settings, turning pydantic errors into one :class:`BackendConfigError` naming fields."""
        try:
            return cls.settings_model.model_validate(dict(settings))
        except ValidationError as exc:
            problems = "; ".join(
                f"backends.{cls.name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            )
            raise BackendConfigError(problems) from None

    @abc.abstractmethod
    def create(self, spec: InstanceSpec) -> Instance:
        """Create and start an instance. Raises CapacityError/AuthError/BackendError."""

    @abc.abstractmethod
    def get(self, name: str) -> Instance:
        """Return the instance. Raises InstanceNotFound."""

    @abc.abstractmethod
    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Instances whose name starts with ``prefix`` (default: this backend's prefix) and carry ``tags``."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Delete the instance; deleting a missing instance is not an error."""

    def remove_all(self, prefix: str | None = None) -> int:
        """Delete every instance with the prefix; returns how many were deleted."""
        instances = self.list(prefix=prefix)
        for instance in instances:
            self.delete(instance.name)
        return len(instances)

    def validate(self, group: Any) -> None:  # noqa: B027 - optional hook
        """Check that a runner group can run here (image exists, size allowed); raise BackendError if not."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # ------------------------------------------------------------------ helpers for implementations
    def _errors(self, action: str) -> AbstractContextManager[None]:
        """A block whose :attr:`provider_errors` become contract errors through :meth:`_translate`."""
        return translated_errors(self.provider_errors, lambda exc: self._translate(action, exc))

    def _translate(self, action: str, exc: Exception) -> BackendError:
        """The contract error for a provider error raised while doing ``action`` (here: no class)."""
        return BackendError(f"{self.name}: {action}: {exc}")

    def _wanted_prefix(self, prefix: str | None) -> str:
        """The name prefix a ``list`` call asks for: ``prefix``, else this backend's."""
        return self.prefix if prefix is None else prefix

    def _matches(
        self,
        name: str,
        inst_tags: Mapping[str, str],
        prefix: str | None,
        tags: Mapping[str, str] | None,
    ) -> bool:
        if not name.startswith(self._wanted_prefix(prefix)):
            return False
        return all(inst_tags.get(k) == v for k, v in (tags or {}).items())

    def _select(
        self,
        instances: Iterable[Instance],
        prefix: str | None,
        tags: Mapping[str, str] | None,
    ) -> builtins.list[Instance]:
        """The instances ``list(prefix, tags)`` returns, of those a provider's own filter let through."""
        return [i for i in instances if self._matches(i.name, i.tags, prefix, tags)]

    def _check_room(self, max_instances: int, what: str) -> None:
        """CapacityError when ``max_instances`` (0: no cap) ``what`` with our prefix exist already."""
        if not max_instances:
            return
        current = len(self.list(prefix=self.prefix))
        if current >= max_instances:
            raise CapacityError(
                f"{self.name}: {current} {what} with prefix {self.prefix!r} "
                f"reach max_instances={max_instances}"
            )
