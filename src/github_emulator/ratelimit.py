"""GitHub's primary (hourly, per token) and secondary (write points per minute) rate limits."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from github_emulator.settings import Settings

WINDOW = 3600.0
SECONDARY_WINDOW = 60.0


@dataclass
class Budget:
    """One token's primary budget in the current hour."""

    limit: int
    used: int
    reset: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class RateLimiter:
    """Per-token budgets. Keys are ``token_key`` values, never tokens."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}
        self._writes: dict[str, deque[tuple[float, int]]] = {}
        self.units: Counter[str] = Counter()

    def _budget(self, key: str, now: float) -> Budget:
        budget = self._budgets.get(key)
        if budget is None or now >= budget.reset:
            budget = Budget(limit=self.settings.rate_limit, used=0, reset=math.ceil(now + WINDOW))
            self._budgets[key] = budget
        budget.limit = self.settings.rate_limit
        return budget

    def reserve(self, key: str) -> tuple[bool, Budget]:
        """Charge one unit; False (and nothing charged) when the budget is spent."""
        with self._lock:
            budget = self._budget(key, time.time())
            if budget.used >= budget.limit:
                return False, Budget(budget.limit, budget.used, budget.reset)
            budget.used += 1
            self.units[key] += 1
            return True, Budget(budget.limit, budget.used, budget.reset)

    def refund(self, key: str) -> Budget:
        """Give back a unit (a 304 or an uncounted endpoint)."""
        with self._lock:
            budget = self._budget(key, time.time())
            if budget.used > 0:
                budget.used -= 1
                self.units[key] -= 1
            return Budget(budget.limit, budget.used, budget.reset)

    def peek(self, key: str) -> Budget:
        with self._lock:
            budget = self._budget(key, time.time())
            return Budget(budget.limit, budget.used, budget.reset)

    def charge_write(self, key: str) -> int | None:
        """Record a write; returns seconds to wait (``retry-after``) if over the secondary limit."""
        limit = self.settings.secondary_limit
        cost = self.settings.write_cost
        if limit <= 0:
            return None
        now = time.time()
        with self._lock:
            window = self._writes.setdefault(key, deque())
            while window and window[0][0] <= now - SECONDARY_WINDOW:
                window.popleft()
            points = sum(p for _, p in window)
            if points + cost > limit:
                # Wait until enough old points leave the window to fit this request.
                freed, wait_until = 0, now + SECONDARY_WINDOW
                for stamp, pts in window:
                    freed += pts
                    if points - freed + cost <= limit:
                        wait_until = stamp + SECONDARY_WINDOW
                        break
                return max(1, math.ceil(wait_until - now))
            window.append((now, cost))
            return None

    def reset(self) -> None:
        with self._lock:
            self._budgets.clear()
            self._writes.clear()
            self.units.clear()
