"""Counters the control API reports: requests per operation, 304s, limits hit, log tail."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any


class Stats:
    """Thread-safe request accounting. Tokens appear only as ``token_key`` values."""

    def __init__(self, log_size: int = 1000) -> None:
        self._lock = threading.Lock()
        self._log_size = log_size
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()
            self.total = 0
            self.not_modified = 0
            self.primary_limited = 0
            self.secondary_limited = 0
            self.agent_requests = 0
            self.control_requests = 0
            self.log: deque[dict[str, Any]] = deque(maxlen=self._log_size)
            self.started = time.time()

    def record(
        self, method: str, path: str, operation_id: str, status: int, token: str | None
    ) -> None:
        with self._lock:
            self.total += 1
            self.requests[operation_id] += 1
            self.statuses[str(status)] += 1
            if status == 304:
                self.not_modified += 1
            self.log.append(
                {
                    "method": method,
                    "path": path,
                    "operation_id": operation_id,
                    "time": time.time(),
                    "status": status,
                    "token": token,
                }
            )

    def bump(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "requests_total": self.total,
                "responses_by_status": dict(self.statuses),
                "not_modified": self.not_modified,
                "primary_limited": self.primary_limited,
                "secondary_limited": self.secondary_limited,
                "agent_requests": self.agent_requests,
                "control_requests": self.control_requests,
                "since": self.started,
                "request_log": list(self.log),
            }
