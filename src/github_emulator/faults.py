"""Injected failures: error statuses, latency, malformed bodies and hangs, per route.

A fault matches a request by operationId (``actions/list-self-hosted-runners-for-org``), by a
path glob (``/orgs/*/actions/runners*``) or ``*`` (every GitHub REST operation). It fires for the
next ``count`` matching requests (or forever), each time with ``probability`` drawn from a
generator seeded with ``seed``, so runs are reproducible.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from github_emulator.state import EmulatorError

ALLOWED_STATUSES = {400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504}


@dataclass
class Fault:
    id: int
    route: str
    status: int | None = None
    retry_after: int | None = None
    latency: float = 0.0
    malformed: bool = False
    hang: bool = False
    hang_seconds: float = 60.0
    count: int | None = None
    probability: float = 1.0
    method: str | None = None
    seed: int | None = None
    hits: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route,
            "status": self.status,
            "retry_after": self.retry_after,
            "latency": self.latency,
            "malformed": self.malformed,
            "hang": self.hang,
            "hang_seconds": self.hang_seconds,
            "count": self.count,
            "probability": self.probability,
            "method": self.method,
            "seed": self.seed,
            "hits": self.hits,
        }


class FaultInjector:
    """Holds active faults; ``match`` is called once per eligible request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self.release = threading.Event()  # set to free hanging requests
        self.injected = 0

    def add(self, spec: dict[str, Any]) -> Fault:
        route = spec.get("route", "*")
        status = spec.get("status")
        if not isinstance(route, str) or not route:
            raise EmulatorError(422, "fault 'route' must be an operationId, a path glob or '*'")
        if status is not None and int(status) not in ALLOWED_STATUSES:
            raise EmulatorError(422, f"fault 'status' must be one of {sorted(ALLOWED_STATUSES)}")
        probability = float(spec.get("probability", 1.0))
        if not 0.0 <= probability <= 1.0:
            raise EmulatorError(422, "fault 'probability' must be within [0, 1]")
        seed = spec.get("seed")
        fault = Fault(
            id=next(self._ids),
            route=route,
            status=None if status is None else int(status),
            retry_after=None if spec.get("retry_after") is None else int(spec["retry_after"]),
            latency=float(spec.get("latency", 0.0)),
            malformed=bool(spec.get("malformed", False)),
            hang=bool(spec.get("hang", False)),
            hang_seconds=float(spec.get("hang_seconds", 60.0)),
            count=None if spec.get("count") is None else int(spec["count"]),
            probability=probability,
            method=(spec.get("method") or None),
            seed=seed,
            rng=random.Random(seed),
        )
        if not (fault.status or fault.latency or fault.malformed or fault.hang):
            raise EmulatorError(422, "a fault needs status, latency, malformed or hang")
        with self._lock:
            self.release.clear()
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
        self.release.set()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def match(self, method: str, path: str, operation_id: str | None) -> Fault | None:
        """The first active fault for this request, consuming one of its ``count``."""
        with self._lock:
            for fault in self._faults:
                if fault.method and fault.method.upper() != method.upper():
                    continue
                if not self._route_matches(fault.route, path, operation_id):
                    continue
                if fault.count is not None and fault.hits >= fault.count:
                    continue
                if fault.probability < 1.0 and fault.rng.random() >= fault.probability:
                    continue
                fault.hits += 1
                self.injected += 1
                return fault
        return None

    @staticmethod
    def _route_matches(route: str, path: str, operation_id: str | None) -> bool:
        if route == "*":
            return operation_id is not None
        if route.startswith("/"):
            return fnmatch.fnmatchcase(path, route)
        return route == operation_id
