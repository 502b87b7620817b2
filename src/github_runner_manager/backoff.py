"""Backoff for runner creation: a circuit breaker per (runner group, GitHub target).

Every failed create costs GitHub two writes (the JIT registration and its removal) and a backend call.
When creates keep failing (a backend outage, a quota, a rejected runner group), retrying each pending
job at every sweep and reconcile would spend GitHub's secondary write budget on nothing. So:

* **closed** (no recent failure): creates start as asked.
* **open**: after a failure no create starts until the backoff delay has passed. The delay doubles
  with each failed round (``initial``, 2x, 4x ...  up to ``maximum``, ±20 % jitter so units do not retry
  in step). Failures of creates that ran concurrently count as one round.
* **half-open**: once the delay has passed, one create at a time (a probe) may start. Its success
  closes the breaker (the next sweep serves every waiting job); its failure opens it again, longer.

Pure logic with an injected clock: the manager keeps one per process (a restart, e.g. after the
operator fixed the backend, starts closed).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: (runner group name, GitHub target text)
Key = tuple[str, str]


@dataclass(frozen=True)
class BackoffState:
    """One breaker that is not closed."""

    group: str
    owner: str
    failures: int
    until: float
    probing: bool
    error: str


@dataclass
class _Entry:
    failures: int = 0
    until: float = 0.0
    probing: bool = False
    error: str = ""


class CreateBackoff:
    """Circuit breakers for runner creation (see the module docstring). Thread-safe.

    Args:
        initial: seconds of the first backoff.
        maximum: the longest backoff.
        clock: epoch or monotonic seconds.
        jitter: ``jitter()`` returns a factor applied to each delay (default uniform 0.8-1.2).

    Raises:
        ValueError: ``initial`` is not positive or ``maximum`` is below it.
    """

    def __init__(
        self,
        initial: float = 2.0,
        maximum: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(
                f"create backoff needs 0 < initial <= maximum, got {initial:g}s and {maximum:g}s"
            )
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.clock = clock
        self._jitter = jitter or (lambda: random.uniform(0.8, 1.2))
        self._entries: dict[Key, _Entry] = {}
        self._lock = threading.Lock()

    def allowance(self, key: Key, wanted: int) -> tuple[int, bool]:
        """How many of ``wanted`` creates may start now, and whether that one is a probe.

        A probe must be settled with :meth:`succeeded`, :meth:`failed` or :meth:`release`.
        """
        if wanted <= 0:
            return 0, False
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return wanted, False
            if entry.probing or self.clock() < entry.until:
                return 0, False
            entry.probing = True
            return 1, True

    def release(self, key: Key) -> None:
        """A probe allowed by :meth:`allowance` did not start (e.g. a cap left no room)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.probing = False

    def succeeded(self, key: Key) -> bool:
        """A create of ``key`` worked: close the breaker. True when it was not closed."""
        with self._lock:
            return self._entries.pop(key, None) is not None

    def failed(self, key: Key, error: str = "") -> float | None:
        """A create of ``key`` failed. Returns the new backoff delay, or None when this failure
        belongs to a round already counted (a concurrent create failed first)."""
        with self._lock:
            now = self.clock()
            entry = self._entries.setdefault(key, _Entry())
            entry.error = error[:300]
            was_probe, entry.probing = entry.probing, False
            if entry.failures and now < entry.until and not was_probe:
                return None
            entry.failures += 1
            delay = min(self.maximum, self.initial * 2 ** min(entry.failures - 1, 30))
            delay = min(self.maximum, delay * max(0.0, self._jitter()))
            entry.until = now + delay
            return delay

    def state(self, key: Key) -> BackoffState | None:
        """The breaker of ``key`` when it is open or half-open; None when closed."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else _state(key, entry)

    def states(self) -> list[BackoffState]:
        """Every breaker that is open or half-open."""
        with self._lock:
            return [_state(key, entry) for key, entry in sorted(self._entries.items())]


def _state(key: Key, entry: _Entry) -> BackoffState:
    return BackoffState(key[0], key[1], entry.failures, entry.until, entry.probing, entry.error)
