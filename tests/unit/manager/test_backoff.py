"""CreateBackoff: the circuit breaker that keeps failing creates from storming GitHub and the backend."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from github_runner_manager.backoff import CreateBackoff

KEY = ("small", "acme")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(initial: float = 2.0, maximum: float = 60.0) -> tuple[CreateBackoff, Clock]:
    clock = Clock()
    return CreateBackoff(initial, maximum, clock=clock, jitter=lambda: 1.0), clock


def test_closed_breaker_allows_everything_and_success_keeps_it_closed() -> None:
    backoff, _ = breaker()
    assert backoff.allowance(KEY, 5) == (5, False)
    assert backoff.allowance(KEY, 0) == (0, False)
    assert backoff.succeeded(KEY) is False  # was closed
    assert backoff.states() == []


def test_a_failure_opens_then_one_probe_then_doubling_up_to_the_maximum() -> None:
    backoff, clock = breaker(2.0, 10.0)
    assert backoff.failed(KEY, "BackendError: down") == 2.0
    assert backoff.allowance(KEY, 3) == (0, False)
    clock.now += 1.9
    assert backoff.allowance(KEY, 3) == (0, False)
    delays = []
    for _ in range(5):
        clock.now += 100
        assert backoff.allowance(KEY, 3) == (1, True)  # half-open: one probe
        assert backoff.allowance(KEY, 3) == (0, False)  # and only one at a time
        delays.append(backoff.failed(KEY, "BackendError: still down"))
    assert delays == [4.0, 8.0, 10.0, 10.0, 10.0]
    [state] = backoff.states()
    assert (state.group, state.owner, state.failures, state.error) == (
        "small",
        "acme",
        6,
        "BackendError: still down",
    )
    clock.now += 100
    assert backoff.allowance(KEY, 3) == (1, True)
    assert backoff.succeeded(KEY) is True
    assert backoff.allowance(KEY, 3) == (3, False)
    assert backoff.states() == []


def test_concurrent_failures_count_as_one_round() -> None:
    backoff, clock = breaker()
    assert backoff.allowance(KEY, 4) == (4, False)
    assert backoff.failed(KEY) == 2.0
    clock.now += 0.5
    assert backoff.failed(KEY) is None
    assert backoff.failed(KEY) is None
    assert backoff.states()[0].failures == 1


def test_a_released_probe_lets_the_next_caller_probe() -> None:
    backoff, clock = breaker()
    backoff.failed(KEY)
    clock.now += 5
    assert backoff.allowance(KEY, 2) == (1, True)
    backoff.release(KEY)  # e.g. the group's cap left no room
    assert backoff.allowance(KEY, 2) == (1, True)
    backoff.release(("other", "acme"))  # unknown keys are ignored


def test_keys_are_independent() -> None:
    backoff, _ = breaker()
    backoff.failed(KEY)
    assert backoff.allowance(("small", "beta"), 2) == (2, False)
    assert backoff.allowance(("large", "acme"), 2) == (2, False)


def test_errors_are_kept_short_and_bad_bounds_refused() -> None:
    backoff, _ = breaker()
    backoff.failed(KEY, "x" * 5000)
    assert len(backoff.states()[0].error) == 300
    for initial, maximum in ((0, 10), (-1, 10), (5, 4)):
        with pytest.raises(ValueError, match="0 < initial <= maximum"):
            CreateBackoff(initial, maximum)


def test_default_jitter_stays_within_twenty_percent() -> None:
    clock = Clock()
    backoff = CreateBackoff(10.0, 100.0, clock=clock)
    delays = []
    for index in range(50):
        key = ("g", str(index))
        delays.append(backoff.failed(key))
    assert all(d is not None and 8.0 <= d <= 12.0 for d in delays)
    assert len(set(delays)) > 1


def test_only_one_probe_under_contention() -> None:
    backoff, clock = breaker()
    backoff.failed(KEY)
    clock.now += 10
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def ask() -> None:
        got = backoff.allowance(KEY, 3)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [(0, False)] * 15 + [(1, True)]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["ask", "fail", "ok", "release"]), st.floats(0, 30)),
        max_size=60,
    )
)
def test_property_no_more_than_one_create_while_not_closed(steps: list[tuple[str, float]]) -> None:
    """Whatever happens, once a failure was seen at most one create runs until a success."""
    backoff, clock = breaker(1.0, 16.0)
    probes_out = 0
    broken = False
    for action, advance in steps:
        clock.now += advance
        if action == "ask":
            allowed, probe = backoff.allowance(KEY, 5)
            if broken:
                assert allowed <= 1 and probe == (allowed == 1)
                probes_out += allowed
                assert probes_out <= 1
            else:
                assert (allowed, probe) == (5, False)
        elif action == "fail":
            delay = backoff.failed(KEY)
            assert delay is None or 0 < delay <= 16.0
            broken, probes_out = True, 0
        elif action == "ok":
            backoff.succeeded(KEY)
            broken, probes_out = False, 0
        else:
            backoff.release(KEY)
            probes_out = 0
