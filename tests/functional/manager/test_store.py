"""Store against a real redis-server: CAS transitions, caps under contention, leases, outages, URLs.

TLS (``rediss://``) and Sentinel (``redis+sentinel://``) run against real redis-server processes
started here (TLS port with a CA made by openssl; ``redis-server --sentinel``).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from tests.parts import RedisServer, free_port, start_redis, unavailable, wait_for

from github_runner_manager.planner import RunnerState
from github_runner_manager.store import (
    RunnerRecord,
    Store,
    StoreUnavailable,
    parse_redis_url,
    redact_url,
)

pytestmark = pytest.mark.needs_redis


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    s = Store(redis_url, key_prefix="t")
    yield s
    s.close()


def _names(n: int, tag: str = "r") -> list[str]:
    return [f"ghr-{tag}-{uuid.uuid4().hex[:8]}" for _ in range(n)]


def _reserve(
    store: Store, names: list[str], group: str = "small", owner: str = "acme", **caps: int
) -> list[str]:
    kwargs = {"group_cap": 0, "total_cap": 0, "owner_cap": 0, **caps}
    return store.reserve_runners(group, owner, names, "unit-0", **kwargs)


# -- records ----------------------------------------------------------------------------------


def test_reserve_creates_creating_records_and_indexes(store: Store) -> None:
    names = _names(3)
    before = time.time()
    assert _reserve(store, names, backend="lxd") == names
    record = store.get_runner(names[0])
    assert isinstance(record, RunnerRecord)
    assert record.state is RunnerState.CREATING
    assert (record.group, record.owner, record.unit, record.backend) == (
        "small",
        "acme",
        "unit-0",
        "lxd",
    )
    assert before <= record.created_at <= time.time()
    assert record.github_id is None and record.job_id is None and record.registered is False
    assert sorted(r.name for r in store.list_runners("small")) == sorted(names)
    assert store.list_runners("large") == []
    assert (
        store.total_count() == 3
        and store.owner_count("acme") == 3
        and store.group_count("small") == 3
    )
    assert store.counts() == {"small": {"creating": 3}}


def test_reserve_never_overwrites_an_existing_record(store: Store) -> None:
    [name] = _names(1)
    assert _reserve(store, [name]) == [name]
    assert store.transition(name, [RunnerState.CREATING], RunnerState.IDLE)
    assert _reserve(store, [name, name]) == []
    assert store.get_runner(name).state is RunnerState.IDLE  # type: ignore[union-attr]
    assert store.total_count() == 1


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"group_cap": 2}, 2),
        ({"total_cap": 3}, 3),
        ({"owner_cap": 1}, 1),
        ({"group_cap": 4, "total_cap": 5, "owner_cap": 3}, 3),
        ({}, 6),
    ],
)
def test_reserve_stops_at_the_tightest_cap(
    store: Store, caps: dict[str, int], expected: int
) -> None:
    names = _names(6)
    assert _reserve(store, names, **caps) == names[:expected]


def test_reserve_counts_other_groups_owners_and_units_against_the_total(store: Store) -> None:
    store.reserve_runners(
        "large", "other-org", _names(2), "unit-1", group_cap=0, total_cap=0, owner_cap=0
    )
    assert _reserve(store, _names(5), total_cap=4) and store.total_count() == 4
    assert _reserve(store, _names(1), total_cap=4) == []
    assert _reserve(store, _names(1), owner="other-org", owner_cap=2, total_cap=0) == []
    # every state counts, not only the live-and-well ones
    for record in store.list_runners("small"):
        store.transition(record.name, [RunnerState.CREATING], RunnerState.FAILED)
    assert _reserve(store, _names(1), total_cap=4) == []
    with pytest.raises(ValueError, match="group_cap"):
        _reserve(store, _names(1), group_cap=-1)


def test_reserve_caps_hold_under_contention(redis_url: str) -> None:
    """8 threads x 3 Store instances reserve and delete at random; no sample ever exceeds a cap."""
    group_cap, owner_cap, total_cap = 9, 11, 15
    groups, owners = ("g1", "g2", "g3"), ("o1", "o2")
    stores = [Store(redis_url, key_prefix="race") for _ in range(3)]
    probe = redis.Redis.from_url(redis_url, decode_responses=True)
    stop = threading.Event()
    violations: list[str] = []
    lock = threading.Lock()
    reserved_total = 0
    deleted_total = 0
    samples = 0

    def sample() -> None:
        nonlocal samples
        while not stop.is_set():
            pipe = probe.pipeline(transaction=True)  # one consistent snapshot
            pipe.scard("race:runners")
            for g in groups:
                pipe.scard(f"race:runners:group:{g}")
            for o in owners:
                pipe.scard(f"race:runners:owner:{o}")
            total, *rest = pipe.execute()
            by_group, by_owner = rest[: len(groups)], rest[len(groups) :]
            if total > total_cap or max(by_group) > group_cap or max(by_owner) > owner_cap:
                violations.append(f"total={total} groups={by_group} owners={by_owner}")
            samples += 1

    def hammer(store: Store, seed: int) -> None:
        nonlocal reserved_total, deleted_total
        rng = random.Random(seed)
        mine: list[str] = []
        for _ in range(60):
            if mine and rng.random() < 0.3:
                store.delete_runner(mine.pop(rng.randrange(len(mine))))
                with lock:
                    deleted_total += 1
                continue
            got = store.reserve_runners(
                rng.choice(groups), rng.choice(owners), _names(rng.randint(1, 4), f"s{seed}"), f"unit-{seed % 3}",
                group_cap=group_cap, total_cap=total_cap, owner_cap=owner_cap,
            )  # fmt: skip
            mine += got
            with lock:
                reserved_total += len(got)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [
        threading.Thread(target=hammer, args=(stores[i % 3], i)) for i in range(24)
    ]  # 8 threads per Store instance
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    stop.set()
    sampler.join(timeout=10)
    assert not any(w.is_alive() for w in workers)
    assert violations == []
    assert samples > 0
    records = stores[0].list_runners()
    assert len(records) == reserved_total - deleted_total == stores[0].total_count()
    assert len(records) <= total_cap
    for g in groups:
        assert sum(r.group == g for r in records) == stores[0].group_count(g) <= group_cap
    for o in owners:
        assert sum(r.owner == o for r in records) == stores[0].owner_count(o) <= owner_cap
    assert reserved_total >= total_cap  # the caps were really reached, not trivially respected
    for s in stores:
        s.close()


def test_transition_is_compare_and_set(store: Store) -> None:
    [name] = _names(1)
    _reserve(store, [name])
    created = store.get_runner(name)
    assert created is not None
    assert not store.transition(name, [RunnerState.IDLE], RunnerState.BUSY)  # not idle yet
    assert store.transition(
        name, [RunnerState.CREATING], RunnerState.IDLE, github_id=42, registered=True
    )
    record = store.get_runner(name)
    assert record is not None
    assert record.state is RunnerState.IDLE and record.github_id == 42 and record.registered
    assert record.updated_at >= created.updated_at
    assert store.transition(
        name, {RunnerState.IDLE, RunnerState.OFFLINE}, RunnerState.BUSY, job_id=7
    )
    record = store.get_runner(name)
    assert record is not None and record.job_id == 7 and record.busy_since is not None
    assert not store.transition("ghr-missing", [RunnerState.IDLE], RunnerState.BUSY)
    with pytest.raises(ValueError, match="from_state"):
        store.transition(name, [], RunnerState.DONE)


def test_only_one_of_concurrent_transitions_wins(redis_url: str) -> None:
    stores = [Store(redis_url, key_prefix="cas") for _ in range(2)]
    names = _names(40)
    _reserve(stores[0], names)
    for name in names:
        stores[0].transition(name, [RunnerState.CREATING], RunnerState.IDLE)
    for name in names:
        barrier = threading.Barrier(8)
        results: list[tuple[int, bool]] = []

        def attempt(i: int, name: str = name, barrier: threading.Barrier = barrier) -> None:
            target = RunnerState.DELETING if i % 2 else RunnerState.BUSY
            barrier.wait(timeout=10)
            results.append(
                (i, stores[i % 2].transition(name, [RunnerState.IDLE], target, unit=f"u{i}"))
            )

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        winners = [i for i, won in results if won]
        assert len(results) == 8 and len(winners) == 1, results
        record = stores[0].get_runner(name)
        assert record is not None
        assert record.state is (RunnerState.DELETING if winners[0] % 2 else RunnerState.BUSY)
        assert record.unit == f"u{winners[0]}"  # the winner's fields, nobody else's


def test_update_get_delete_and_counts(store: Store) -> None:
    a, b = _names(2)
    _reserve(store, [a])
    store.reserve_runners("large", "acme/app", [b], "unit-1", group_cap=0, total_cap=0, owner_cap=0)
    store.update(a, github_id=9, backend="docker", job_id=None)
    store.update("ghr-none", github_id=1)  # never creates a record
    assert store.get_runner("ghr-none") is None
    record = store.get_runner(a)
    assert (
        record is not None
        and record.github_id == 9
        and record.backend == "docker"
        and record.job_id is None
    )
    with pytest.raises(ValueError, match="cannot be changed"):
        store.update(a, state="busy")
    store.transition(b, [RunnerState.CREATING], RunnerState.IDLE)
    assert store.counts() == {"small": {"creating": 1}, "large": {"idle": 1}}
    store.delete_runner(a)
    store.delete_runner(a)  # idempotent
    assert store.get_runner(a) is None
    assert [r.name for r in store.list_runners()] == [b]
    assert (
        store.owner_count("acme") == 0
        and store.owner_count("acme/app") == 1
        and store.total_count() == 1
    )


def test_list_prunes_index_entries_without_a_record(store: Store) -> None:
    a, b = _names(2)
    _reserve(store, [a, b])
    store.client.delete(f"t:runner:{a}")  # e.g. removed by hand
    assert [r.name for r in store.list_runners()] == [b]
    assert store.client.sismember("t:runners", a) == 0


@pytest.mark.parametrize("field", ["token", "jit_config", "webhook_secret", "encoded", "password"])
def test_refuses_secret_looking_fields(store: Store, field: str) -> None:
    [name] = _names(1)
    _reserve(store, [name])
    with pytest.raises(ValueError, match="secret"):
        store.update(name, **{field: "x"})
    with pytest.raises(ValueError, match="secret"):
        store.transition(name, [RunnerState.CREATING], RunnerState.IDLE, **{field: "x"})
    assert store.get_runner(name).state is RunnerState.CREATING  # type: ignore[union-attr]


def test_unknown_state_in_redis_reads_as_failed(store: Store) -> None:
    [name] = _names(1)
    _reserve(store, [name])
    store.client.hset(f"t:runner:{name}", "state", "exploded")
    assert store.get_runner(name).state is RunnerState.FAILED  # type: ignore[union-attr]


# -- leases, locks, latency, counters ------------------------------------------------------------


def test_lease_is_exclusive_and_released_on_exit(redis_url: str) -> None:
    one, two = Store(redis_url, key_prefix="l"), Store(redis_url, key_prefix="l")
    with one.lease("create:small", 10) as first:
        assert first is True
        with two.lease("create:small", 10) as second:
            assert second is False
        with one.lease("create:small", 10) as again:  # not re-entrant either
            assert again is False
        assert one.client.exists("l:lease:create:small") == 1  # the loser did not release it
    with two.lease("create:small", 10) as third:
        assert third is True


def test_lease_expires_and_a_late_holder_never_releases_the_next_one(redis_url: str) -> None:
    one, two = Store(redis_url, key_prefix="l"), Store(redis_url, key_prefix="l")
    first = one.lease("delete:r1", 0.2)
    assert first.__enter__() is True

    def take() -> bool:
        ctx = two.lease("delete:r1", 30)
        if ctx.__enter__():
            taken.append(ctx)
            return True
        ctx.__exit__(None, None, None)
        return False

    taken: list[object] = []
    wait_for(take, timeout=5, what="the expired lease to be free")
    first.__exit__(None, None, None)  # the stale holder exits late
    assert two.client.exists("l:lease:delete:r1") == 1
    with one.lease("delete:r1", 1) as stolen:
        assert stolen is False
    with pytest.raises(ValueError):
        with one.lease("x", 0):
            pass


def test_a_lease_of_a_dead_holder_is_broken_and_a_live_ones_kept(redis_url: str) -> None:
    one, two = Store(redis_url, key_prefix="ld"), Store(redis_url, key_prefix="ld")
    judged: list[str] = []

    def dead(holder: str) -> bool:
        judged.append(holder)
        return holder == "host/111:1"

    crashed = one.lease("delete:r1", 300, holder="host/111:1")
    assert crashed.__enter__() is True  # its holder is then killed: never exits
    left = two.client.get("ld:lease:delete:r1")
    with two.lease("delete:r1", 300, holder="host/222:2", holder_dead=dead) as taken:
        assert taken is True
        assert judged == ["host/111:1"]
        assert two.client.get("ld:lease:delete:r1") != left
        assert two.client.pttl("ld:lease:delete:r1") > 290_000
        # a live holder's lease is not broken, and a lease without a holder is never judged
        with one.lease("delete:r1", 300, holder="host/333:3", holder_dead=dead) as third:
            assert third is False
        assert judged == ["host/111:1", "host/222:2"]
    with one.lease("delete:r2", 300) as anonymous:
        assert anonymous is True
        with two.lease("delete:r2", 300, holder="h/1:1", holder_dead=lambda h: True) as other:
            assert other is False
    # the stale holder exiting late does not release the new holder's lease
    with two.lease("delete:r3", 300, holder="host/222:2") as held:
        assert held is True
        crashed.__exit__(None, None, None)
        assert two.client.exists("ld:lease:delete:r3") == 1


def test_reserve_writes_fields_atomically_and_refuses_identity_or_secrets(store: Store) -> None:
    names = _names(2)
    got = _reserve(store, names, fields={"session": "42:9", "job_id": 7})
    assert got == names
    for name in names:
        record = store.get_runner(name)
        assert record is not None and record.extra["session"] == "42:9" and record.job_id == 7
        assert record.state is RunnerState.CREATING and record.group == "small"
    for bad in ({"state": "idle"}, {"api_token": "x"}, {"Bad-Name": 1}):
        with pytest.raises(ValueError):
            _reserve(store, _names(1), fields=bad)
    assert store.total_count() == 2


def test_lock_is_a_redis_py_lock(store: Store) -> None:
    lock = store.lock("reconcile:unit-0", timeout=5)
    other = store.lock("reconcile:unit-0", timeout=5)
    assert isinstance(lock, redis.lock.Lock)
    assert lock.acquire(blocking=False)
    assert not other.acquire(blocking=False)
    assert lock.locked() and lock.owned() and not other.owned()
    lock.release()
    assert other.acquire(blocking=False)
    other.release()
    with pytest.raises(redis.exceptions.LockError):
        other.release()


def test_pickup_percentiles_over_the_last_thousand(store: Store) -> None:
    assert store.pickup_percentiles("small") == {"count": 0, "p50": None, "p95": None, "max": None}
    for value in range(1, 101):
        store.record_pickup("small", float(value))
    assert store.pickup_percentiles("small") == {
        "count": 100,
        "p50": 50.0,
        "p95": 95.0,
        "max": 100.0,
    }
    for _ in range(1200):
        store.record_pickup("large", 1000.0)
    assert store.pickup_percentiles("large")["count"] == 1000
    for _ in range(1000):
        store.record_pickup("large", 0.5)  # the newest 1000 push the old ones out
    assert store.pickup_percentiles("large") == {"count": 1000, "p50": 0.5, "p95": 0.5, "max": 0.5}


def test_counters(store: Store) -> None:
    store.incr("jobs_unmatched")
    store.incr("jobs_unmatched", 4)
    store.incr("creates")
    assert store.counters() == {"jobs_unmatched": 5, "creates": 1}


# -- outages ------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "private-redis")
    yield server
    server.stop()


def test_unavailable_redis_raises_store_unavailable_naming_the_host(
    private_redis: RedisServer,
) -> None:
    password = "pw-" + uuid.uuid4().hex
    private_redis.client().config_set("requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{private_redis.port}/0"
    store = Store(url, key_prefix="o", socket_timeout=2)
    assert store.ping()
    [name] = _names(1)
    assert _reserve(store, [name]) == [name]
    private_redis.stop()
    assert store.ping() is False
    calls = [
        lambda: _reserve(store, _names(1)),
        lambda: store.transition(name, [RunnerState.CREATING], RunnerState.IDLE),
        lambda: store.update(name, github_id=1),
        lambda: store.get_runner(name),
        store.list_runners,
        lambda: store.delete_runner(name),
        store.counts,
        lambda: store.owner_count("acme"),
        store.total_count,
        lambda: store.record_pickup("small", 1.0),
        lambda: store.pickup_percentiles("small"),
        lambda: store.incr("x"),
        store.counters,
        lambda: store.lease("k", 1).__enter__(),
        lambda: store.lock("k", 1).acquire(blocking=False),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as info:
            call()
        message = str(info.value)
        assert f"127.0.0.1:{private_redis.port}" in message
        assert password not in message and password not in repr(info.value)
    private_redis.restart()
    private_redis.client().config_set("requirepass", password)
    wait_for(store.ping, timeout=10, what="the store to reconnect after the restart")
    assert store.total_count() == 0  # a restarted, empty Redis: records are rebuilt elsewhere


def test_wrong_password_is_unavailable_without_echoing_it(private_redis: RedisServer) -> None:
    private_redis.client().config_set("requirepass", "right-one")
    store = Store(f"redis://user:wrong-one-xyz@127.0.0.1:{private_redis.port}/0", socket_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        store.total_count()
    assert "wrong-one-xyz" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


def test_nothing_listening_is_unavailable() -> None:
    port = free_port()
    store = Store(f"redis://127.0.0.1:{port}/0", socket_timeout=1)
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
        store.counters()


# -- URLs -----------------------------------------------------------------------------------------


def test_parse_plain_url() -> None:
    t = parse_redis_url("redis://127.0.0.1:6380/3")
    assert (t.scheme, t.hosts, t.db, t.tls, t.sentinel) == (
        "redis",
        (("127.0.0.1", 6380),),
        3,
        False,
        False,
    )
    t = parse_redis_url("redis://redis.internal")
    assert t.hosts == (("redis.internal", 6379),) and t.db == 0 and t.password is None
    t = parse_redis_url("redis://user:p%40ss%3Aw0rd@[::1]:7000/1")
    assert (
        t.username == "user"
        and t.password == "p@ss:w0rd"
        and t.hosts == (("::1", 7000),)
        and t.db == 1
    )
    assert "p@ss" not in repr(t) and "p@ss" not in t.describe()
    t = parse_redis_url("redis://:only-pass@h/0")
    assert t.username is None and t.password == "only-pass"


def test_parse_tls_url() -> None:
    t = parse_redis_url("rediss://:pw@cache.example:6380/0?ssl_cert_reqs=none")
    assert t.tls and t.ssl_cert_reqs == "none"
    assert t.ssl_kwargs()["ssl"] is True and t.ssl_kwargs()["ssl_check_hostname"] is False
    t = parse_redis_url("rediss://cache.example?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false")
    assert (
        t.ssl_cert_reqs == "required"
        and t.ssl_ca_certs == "/etc/ca.pem"
        and not t.ssl_check_hostname
    )
    assert parse_redis_url("rediss://h").ssl_kwargs()["ssl_check_hostname"] is True
    assert parse_redis_url("redis://h").ssl_kwargs() == {}


def test_parse_sentinel_url() -> None:
    t = parse_redis_url(
        "redis+sentinel://:pw@s1:26379,s2,[fd00::3]:26380/mymaster/2?sentinel_password=sp"
    )
    assert t.sentinel and not t.tls
    assert t.hosts == (("s1", 26379), ("s2", 26379), ("fd00::3", 26380))
    assert (
        t.master_name == "mymaster"
        and t.db == 2
        and t.password == "pw"
        and t.sentinel_password == "sp"
    )
    assert t.describe() == "redis+sentinel://s1:26379,s2:26379,[fd00::3]:26380/mymaster/2"
    assert parse_redis_url("redis+sentinel://s1/mymaster").db == 0
    assert parse_redis_url("rediss+sentinel://s1/m/0?ssl_cert_reqs=optional").tls


def test_parse_unix_url() -> None:
    t = parse_redis_url("unix:///run/redis/redis.sock?db=4")
    assert t.path == "/run/redis/redis.sock" and t.db == 4 and t.hosts == ()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379/0", "expected redis://"),
        ("redis://", "missing host"),
        ("redis://h:99999/0", "bad port"),
        ("redis://h:abc/0", "bad port"),
        ("redis://h/zero", "database must be a number"),
        ("redis://h1,h2/0", "redis\\+sentinel"),
        ("redis+sentinel://s1:26379", "master name"),
        ("redis+sentinel://s1/m/x", "database"),
        ("redis://h/0?ssl_cert_reqs=none", "needs rediss"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "required, optional or none"),
        ("rediss://h/0?ssl_check_hostname=perhaps", "true or false"),
        ("redis://h/0?sentinel_password=x", "needs redis\\+sentinel"),
        ("redis://h/0?bogus=1", "unknown option"),
        ("unix://relative.sock", "socket path"),
    ],
)
def test_parse_rejects_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_errors_and_redaction_never_show_the_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url("redis://admin:hunter2@h:notaport/0")
    assert "hunter2" not in str(info.value)
    assert redact_url("redis://admin:hunter2@h:6379/0") == "redis://****@h:6379/0"
    assert redact_url("redis+sentinel://s1/m/0?sentinel_password=hunter2") == (
        "redis+sentinel://s1/m/0?sentinel_password=****"
    )
    assert redact_url("redis://a:b/c@d@h/0") == "redis://****@h/0"


def test_from_config_accepts_the_config_model(redis_server: RedisServer) -> None:
    from github_runner_manager.config import RedisConfig

    cfg = RedisConfig(url=redis_server.url, key_prefix="cfg")
    store = Store.from_config(cfg)
    assert store.key_prefix == "cfg" and store.ping()
    store.close()


# -- TLS and Sentinel, for real ---------------------------------------------------------------------


def _wait_or_fail(
    process: subprocess.Popen[bytes], condition: object, what: str, log: Path
) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        return bool(condition())  # type: ignore[operator]

    try:
        wait_for(ready, timeout=15, what=what)
    except TimeoutError as exc:
        process.kill()
        unavailable(f"{what}: {exc}")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server with only a TLS port, its certificate signed by a CA made here (SAN 127.0.0.1)."""
    openssl, server = shutil.which("openssl"), shutil.which("redis-server")
    if not openssl or not server:
        unavailable("openssl and redis-server are needed for the TLS test")
    ca_key, ca, key, csr, crt = (
        tmp_path / n for n in ("ca.key", "ca.pem", "tls.key", "tls.csr", "tls.pem")
    )
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=ghrm-test-ca")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))  # fmt: skip
    port = free_port()
    log = tmp_path / "redis-tls.log"
    process = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(crt),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    probe = Store(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", socket_timeout=1)
    _wait_or_fail(process, probe.ping, f"redis-server TLS on port {port}", log)
    yield port, ca
    process.terminate()
    process.wait(timeout=10)


def test_rediss_talks_tls_and_verifies_the_certificate(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    store = Store(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", key_prefix="tls", socket_timeout=3
    )
    names = _names(2)
    assert _reserve(store, names, group_cap=1) == names[:1]
    assert store.transition(names[0], [RunnerState.CREATING], RunnerState.IDLE)
    # Without our CA the server's certificate is not trusted: refused unless verification is off.
    untrusted = Store(f"rediss://127.0.0.1:{port}/0", key_prefix="tls", socket_timeout=3)
    assert untrusted.ping() is False
    with pytest.raises(StoreUnavailable, match=f"rediss://127.0.0.1:{port}"):
        untrusted.total_count()
    relaxed = Store(
        f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none", key_prefix="tls", socket_timeout=3
    )
    assert relaxed.total_count() == 1
    # Plain text to a TLS port does not work either.
    plain = Store(f"redis://127.0.0.1:{port}/0", socket_timeout=2)
    assert plain.ping() is False


@pytest.fixture
def sentinel(private_redis: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A real Sentinel (``redis-server --sentinel``) monitoring the private redis as ``ghrm-master``."""
    server = shutil.which("redis-server")
    if not server:
        unavailable("redis-server is needed for the Sentinel test")
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    log = tmp_path / "sentinel.log"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {log}\nprotected-mode no\n"
        f"sentinel monitor ghrm-master 127.0.0.1 {private_redis.port} 1\n"
        "sentinel down-after-milliseconds ghrm-master 60000\n"
    )
    process = subprocess.Popen(
        [server, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)

    def master_known() -> bool:
        return probe.sentinel_get_master_addr_by_name("ghrm-master") is not None

    _wait_or_fail(process, master_known, f"redis sentinel on port {port}", log)
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_sentinel_url_finds_the_master(sentinel: int, private_redis: RedisServer) -> None:
    dead = free_port()  # a Sentinel that is down is skipped for the next one in the list
    store = Store(
        f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel}/ghrm-master/0", key_prefix="sen"
    )
    assert store.ping()
    names = _names(3)
    assert _reserve(store, names, total_cap=2) == names[:2]
    direct = private_redis.client()
    assert direct.scard("sen:runners") == 2  # written to the master Sentinel named
    assert store.transition(names[0], [RunnerState.CREATING], RunnerState.IDLE)
    wrong = Store(f"redis+sentinel://127.0.0.1:{sentinel}/no-such-master/0", socket_timeout=2)
    with pytest.raises(StoreUnavailable, match="no-such-master"):
        wrong.total_count()
