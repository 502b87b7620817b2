"""Campaign 5 -- fuzz (hypothesis, 1,000 examples each): bad input is a clear error, never a traceback.

* charm config (``CharmState.from_config``): a ``CharmState`` or ``CharmConfigInvalidError`` whose
  problems each start with an option name; never a secret in the message; what the charm accepts the
  manager accepts (``parse_config(to_manager_config())``), and the redacted form holds no secret;
* manager YAML (``load_config`` on the text, ``parse_config`` on the mapping): a ``ManagerConfig`` or a
  ``ConfigError`` naming a key path, never the token; an accepted config dumps (secrets redacted) to
  YAML that loads back;
* webhook bodies and headers (``webhook.create_app`` + werkzeug's test client, a real Redis queue):
  always 2xx/4xx with a JSON error, never 5xx; nothing enqueued without a valid signature;
* GitHub API responses (``GitHubClient`` against a tiny local werkzeug server that answers whatever
  hypothesis scripted: status, headers, body): every call returns or raises ``GitHubError`` -- never
  another exception type; plus the emulator's ``malformed`` fault on every route.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from charm_state import OPTIONS, CharmConfigInvalidError, CharmState, SecretUnreadableError
from github_runner_manager.config import ConfigError, GitHubPath, dump_config, load_config, parse_config
from github_runner_manager.github import GitHubClient, GitHubError
from github_runner_manager.jobqueue import JobQueue
from github_runner_manager.webhook import create_app
from tests.reliability.harness import TOKEN, WEBHOOK_SECRET

pytestmark = pytest.mark.chaos

EXAMPLES = 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
SECRET_VALUE = "s3cr3t-Fuzz-T0ken-VALUE-77"
SECRET_ID = "secret:" + "a" * 20
WEBHOOK_ID = "secret:" + "b" * 20
BACKEND_ID = "secret:" + "c" * 20
BACKEND_SECRET_VALUE = "cl0ud-Fuzz-Cred-99x"

_JUNK = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "~", "[", "{a: 1", "- a\n- b", "a: b: c", "!!binary aGVsbG8=", "&a [*a, *a]",
                     "9" * 300, "1e400", "-1", "0", "yes", "null", "\x00", "secret:", SECRET_ID, "secret:zz"]),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
)  # fmt: skip
#: Per option: values that are valid, then values that are not (junk of any type comes on top).
_VALID: dict[str, list[Any]] = {
    "path": ["acme", "acme/app", "enterprise:big", "acme, acme/lib"],
    "token": [SECRET_ID],
    "webhook-secret": ["", WEBHOOK_ID],
    "virtual-machines": [0, 1, 5],
    "vm-cpu": [1, 2, 8],
    "vm-memory": ["7GiB", "512MiB", "16G"],
    "vm-disk": ["10GiB", "1GiB"],
    "labels": ["", "large", "large, gpu"],
    "group": ["default", "builders"],
    "reconcile-interval": [1, 10, 1440],
    "backend": ["lxd", "fake", "docker"],
    "backend-config": [""],
    "runner-groups": ["", "[{name: small, min-idle: 2, max-runners: 4}]"],
    "max-total-runners": [0, 10],
    "per-owner-max-runners": [0, 3],
    "denylist": ["", "10.0.0.0/8", "10.0.0.0/8, fd00::/8"],
    "dockerhub-mirror": ["", "https://mirror.example.com"],
    "runner-storage": ["juju-storage", "memory"],
    "base-image": ["debian:bookworm", "ubuntu:noble"],
    "image-build-interval": [0, 6, 720],
    "redis-url": ["", "redis://10.0.0.5:6379/0", f"rediss://:{SECRET_VALUE}@redis.example:6380/1"],
    "test-mode": [False, True],
}
_INVALID: dict[str, list[Any]] = {
    "path": ["", "bad path!", "a/b/c", "enterprise:"],
    "token": [SECRET_VALUE, "", WEBHOOK_ID + "x", "secret:" + "z" * 20],
    "webhook-secret": [SECRET_VALUE, "secret:nope"],
    "virtual-machines": [-1, 10**12],
    "vm-cpu": [0, -2],
    "vm-memory": ["1KiB", "lots", "-1G"],
    "vm-disk": ["0", "1MiB"],
    "labels": ["bad label!", ",,,", "x" * 200],
    "group": ["", "a" * 300],
    "reconcile-interval": [0, 100000],
    "backend": ["nope", "LXD"],
    "backend-config": [BACKEND_ID, "{aws: {region: x}}", "secret:" + "d" * 20],
    "runner-groups": ["- name: a\n  backends: [lxd, aws]", "[{name: Bad_Name}]", "[1, 2]", "[{name: a, memory: 1MiB}]", "[", "{a: 1}"],
    "max-total-runners": [-5],
    "per-owner-max-runners": [-1],
    "denylist": ["300.1.1.1/8", "10.0.0.0/33", "x"],
    "dockerhub-mirror": ["ftp://x", "not a url"],
    "runner-storage": ["disk"],
    "base-image": ["arch:latest", "debian"],
    "image-build-interval": [721, -1],
    "redis-url": ["http://x", "redis://", "redis://:pw@[::1"],
    "test-mode": ["yes"],
}  # fmt: skip


def _read_secret(contents: dict[str, dict[str, Any]]) -> Any:
    def read(secret_id: str) -> dict[str, Any]:
        if secret_id not in contents:
            raise SecretUnreadableError("is not granted")
        return contents[secret_id]

    return read


@st.composite
def charm_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid configs with a few options wrong (a wrong value, or junk of any type)."""
    config: dict[str, Any] = {"path": draw(st.sampled_from(_VALID["path"])), "token": SECRET_ID}
    for option in OPTIONS:
        roll = draw(st.integers(0, 39))
        if roll < 30:
            continue
        if roll < 37:
            config[option] = draw(st.sampled_from(_VALID[option]))
        elif roll < 39:
            config[option] = draw(st.sampled_from(_INVALID[option]))
        else:
            config[option] = draw(_JUNK)
    if draw(st.integers(0, 19)) == 0:
        config[draw(st.text(min_size=1, max_size=10))] = draw(_JUNK)
    return config


def test_fuzz_charm_config() -> None:
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(
        config=charm_configs(),
        backend=st.one_of(
            st.just({"config": "aws: {region: eu-west-1, secret_access_key: " + BACKEND_SECRET_VALUE + "}"}),
            st.dictionaries(st.sampled_from(["config", "value", "token"]), _JUNK.map(str), max_size=2),
        ),
    )
    def check(config: dict[str, Any], backend: dict[str, Any]) -> None:
        contents = {SECRET_ID: {"token": SECRET_VALUE}, WEBHOOK_ID: {"value": SECRET_VALUE}, BACKEND_ID: backend}
        try:
            state = CharmState.from_config(config, read_secret=_read_secret(contents), arch="x64")
        except CharmConfigInvalidError as exc:
            outcomes["blocked"] += 1
            assert exc.errors and all(
                any(e.startswith(o) for o in OPTIONS) or e.split(":")[0].strip() in OPTIONS for e in exc.errors
            ), exc.errors
            typed = " ".join(str(v) for v in config.values())
            for secret in (SECRET_VALUE, BACKEND_SECRET_VALUE):
                if secret not in typed:
                    assert secret not in str(exc), str(exc)
            return
        outcomes["valid"] += 1
        manager = parse_config(state.to_manager_config())  # what the charm accepts, the manager accepts
        assert manager.runner_groups
        shown = json.dumps(state.to_manager_config(redact=True), default=str)
        assert SECRET_VALUE not in shown and BACKEND_SECRET_VALUE not in shown
        assert SECRET_VALUE not in dump_config(manager) and BACKEND_SECRET_VALUE not in dump_config(manager)

    check()
    print(f"\ncharm config fuzz: {dict(outcomes)}")
    assert outcomes["valid"] > 20 and outcomes["blocked"] > 20, outcomes


# ------------------------------------------------------------------------------------ manager YAML
BASE_CONFIG: dict[str, Any] = {
    "github": {"url": "http://127.0.0.1:1", "token": SECRET_VALUE, "paths": ["acme", "acme/app"]},
    "webhook": {"listen": "127.0.0.1:8080", "secret": SECRET_VALUE},
    "redis": {"url": "redis://127.0.0.1:6379/0"},
    "reconcile_interval": "60s",
    "max_total_runners": 50,
    "denylist": ["10.0.0.0/8"],
    "runner_groups": [
        {"name": "small", "labels": ["self-hosted", "small"], "backend": "fake", "memory": "4GiB",
         "max_lifetime": "6h", "min_idle": 2, "max_runners": 20},
        {"name": "large", "labels": ["large"], "backends": ["fake", "lxd"], "cpu": 8,
         "sizing": {"max_cpu": 16, "max_memory": "64GiB"}},
    ],
    "backends": {"fake": {"mode": "memory"}, "lxd": {}, "aws": {"secret_access_key": SECRET_VALUE}},
}  # fmt: skip
_KEYS = ["github", "webhook", "redis", "runner_groups", "backends", "url", "token", "paths", "listen", "secret",
         "name", "labels", "backend", "backends", "cpu", "memory", "disk", "min_idle", "max_runners",
         "max_lifetime", "sizing", "max_cpu", "prefix", "unit", "concurrency", "denylist", "key_prefix",
         "reconcile_interval", "poll_interval", "timeout", "mode", "fail_rate", "bogus"]  # fmt: skip
_VALUES = st.one_of(
    _JUNK,
    st.sampled_from(["4GiB", "1s", "6h", "10.0.0.0/8", "fake", "lxd", "acme", "enterprise:big", "redis://h:1/0",
                     "rediss://:pw@h:2/1", "redis+sentinel://a:1,b:2/m/0", "127.0.0.1:0", [], {}, ["small"]]),
)  # fmt: skip


def _mutate(data: Any, draw: st.DrawFn, rate: int) -> Any:
    """``data`` with each key dropped, value replaced or key added with probability ``rate`` %."""

    def hit() -> bool:
        return rate > 0 and draw(st.integers(0, 99)) < rate

    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if hit():
                continue  # dropped
            out[key] = draw(_VALUES) if hit() else _mutate(value, draw, rate)
        if hit():
            out[draw(st.sampled_from(_KEYS))] = draw(_VALUES)
        return out
    if isinstance(data, list):
        items = [_mutate(v, draw, rate) for v in data if not hit()]
        if hit():
            items.append(draw(_VALUES))
        return items
    return draw(_VALUES) if hit() else data


@st.composite
def manager_docs(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=200))
    if kind == 1:
        return draw(st.sampled_from(["", "[]", "- 1", "github: [", "a: 1\na: 2", "!!python/object:os.system {}",
                                     "&a [*a, *a, *a]", "---\n---\n", "\t\tx", "github: {url: 1}"]))  # fmt: skip
    text = yaml.safe_dump(_mutate(BASE_CONFIG, draw, draw(st.sampled_from([0, 1, 2, 4, 10]))), sort_keys=False)
    if kind == 2:  # cut anywhere
        return text[: draw(st.integers(0, len(text)))]
    return text


def test_fuzz_manager_yaml() -> None:
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"

        @FUZZ
        @given(doc=manager_docs())
        def check(doc: str) -> None:
            path.write_text(doc)
            try:
                cfg = load_config(path)
            except ConfigError as exc:
                outcomes["error"] += 1
                message = str(exc)
                assert message.strip() and "Traceback" not in message
                assert SECRET_VALUE not in message, message
                return
            outcomes["valid"] += 1
            dumped = dump_config(cfg)
            assert SECRET_VALUE not in dumped and SECRET_VALUE not in repr(cfg)
            parse_config(yaml.safe_load(dumped))  # the effective config loads back as-is
            data = yaml.safe_load(doc)
            assert parse_config(data) == cfg

        check()
    print(f"\nmanager YAML fuzz: {dict(outcomes)}")
    assert outcomes["valid"] > 50 and outcomes["error"] > 50, outcomes


# ------------------------------------------------------------------------------------------ webhook
def _payload(draw: st.DrawFn) -> Any:
    """A workflow_job payload: well formed, with a few fields (rate drawn per example) wrong or missing."""
    payload = {
        "action": draw(st.sampled_from(["queued", "in_progress", "completed", "waiting"])),
        "workflow_job": {
            "id": draw(st.integers(1, 10**6)), "run_id": draw(st.integers(1, 10**6)),
            "labels": draw(st.lists(st.sampled_from(["self-hosted", "small", "x"]), max_size=3)),
            "status": draw(st.sampled_from(["queued", "in_progress", "completed"])),
            "conclusion": draw(st.sampled_from([None, "success", "failure"])),
            "runner_name": draw(st.sampled_from([None, "ghr-small-abc"])), "runner_id": draw(st.sampled_from([None, 7])),
            "created_at": "2026-01-01T00:00:00Z",
        },
        "repository": {"full_name": "acme/app", "owner": {"login": "acme"}},
    }  # fmt: skip
    return _mutate(payload, draw, draw(st.sampled_from([0, 0, 3, 10, 30])))


@st.composite
def deliveries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        body = draw(st.binary(max_size=300))
    elif kind == 1:
        body = json.dumps(draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                            max_leaves=10))).encode()  # fmt: skip
    else:
        text = json.dumps(_payload(draw), default=str)
        if kind == 2 and draw(st.booleans()):
            text = text[: draw(st.integers(0, len(text)))]
        body = text.encode()
    sig = draw(st.sampled_from(["valid"] * 4 + ["missing", "random", "other-body", "wrong-secret", "sha1", "upper", "empty"]))
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    signature = {
        "valid": f"sha256={digest}",
        "upper": f"sha256={digest.upper()}",
        "missing": None,
        "empty": "",
        "random": draw(st.text(max_size=80).filter(lambda t: "\n" not in t and "\r" not in t)),
        "other-body": "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body + b"x", hashlib.sha256).hexdigest(),
        "wrong-secret": "sha256=" + hmac.new(b"nope", body, hashlib.sha256).hexdigest(),
        "sha1": "sha1=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest(),
    }[sig]
    headers = {}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    event = draw(st.one_of(st.sampled_from(["workflow_job"] * 6 + ["ping", "push", ""]),
                           st.text(max_size=20, alphabet=st.characters(min_codepoint=32, max_codepoint=126))))  # fmt: skip
    if event or draw(st.booleans()):
        headers["X-GitHub-Event"] = event
    delivery = draw(st.one_of(st.uuids().map(str), st.uuids().map(str), st.just(""), st.text(max_size=40, alphabet=st.characters(min_codepoint=32, max_codepoint=126))))  # fmt: skip
    if delivery or draw(st.booleans()):
        headers["X-GitHub-Delivery"] = delivery
    content_type = draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", None]))
    if content_type == "application/x-www-form-urlencoded" and draw(st.booleans()):
        from urllib.parse import urlencode

        body = urlencode({"payload": body.decode("utf-8", "replace")}).encode()
        if sig in ("valid", "upper"):
            digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={digest}"
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT"]))
    path = draw(st.sampled_from(["/webhook"] * 8 + ["/webhook/", "/other", "/healthz"]))
    return {"body": body, "headers": headers, "content_type": content_type, "sig": sig, "method": method, "path": path}


def test_fuzz_webhook(redis_url: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    queue = JobQueue(client, key_prefix="fuzz", consumer="fuzz-0")
    app = create_app(queue, WEBHOOK_SECRET.encode())
    web = Client(app)
    outcomes: Counter[str] = Counter()

    def length() -> int:
        return int(client.xlen("fuzz:jobs")) if client.exists("fuzz:jobs") else 0

    @FUZZ
    @given(d=deliveries())
    def check(d: dict[str, Any]) -> None:
        before = length()
        resp = web.open(d["path"], method=d["method"], data=d["body"], headers=d["headers"],
                        content_type=d["content_type"])  # fmt: skip
        after = length()
        outcomes[f"{resp.status_code}"] += 1
        assert resp.status_code < 500 or (d["path"] == "/healthz" and resp.status_code == 503), (
            resp.status_code, resp.get_data()[:300], d,
        )  # fmt: skip
        assert 200 <= resp.status_code < 500 or d["path"] == "/healthz"
        if resp.status_code != 204:
            json.loads(resp.get_data())  # always a JSON answer, never an HTML traceback page
        if after != before:
            assert d["sig"] in ("valid", "upper"), ("enqueued without a valid signature", d)
            assert resp.status_code == 202 and after == before + 1
            outcomes["enqueued"] += 1
        if d["sig"] not in ("valid", "upper") and d["path"].rstrip("/") == "/webhook" and d["method"] == "POST":
            assert resp.status_code in (401, 413), (resp.status_code, d)

    check()
    print(f"\nwebhook fuzz: {dict(outcomes)}")
    assert outcomes["enqueued"] > 10 and outcomes["401"] > 100, outcomes


# ------------------------------------------------------------------------------------- API answers
class Scripted:
    """A loopback HTTP server answering every request with the scripted (status, headers, body)."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
        self.requests = 0

        def app(environ: Any, start_response: Any) -> Any:
            Request(environ).get_data()
            self.requests += 1
            status, headers, body = self.answer
            return Response(body, status=status, headers=headers)(environ, start_response)

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


class FakeTime:
    """The client's clock and sleep: waiting advances the clock, so rate-limit waits cost no real time."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
_FIELD = st.one_of(_JSON, st.integers(), st.text(max_size=6), st.just("12"), st.just("2.321.0"))


@st.composite
def shaped(draw: st.DrawFn) -> Any:
    """JSON shaped like GitHub's answers, with random holes and wrong types."""
    runner = st.fixed_dictionaries({}, optional={"id": _FIELD, "name": _FIELD, "os": _FIELD, "status": _FIELD,
                                                 "busy": _FIELD, "labels": st.one_of(_FIELD, st.lists(st.one_of(_FIELD, st.fixed_dictionaries({"name": _FIELD}))))})  # fmt: skip
    app = st.fixed_dictionaries({}, optional={"os": _FIELD, "architecture": _FIELD, "download_url": _FIELD,
                                              "filename": _FIELD, "sha256_checksum": _FIELD})  # fmt: skip
    job = st.fixed_dictionaries({}, optional={"id": _FIELD, "run_id": _FIELD, "status": st.one_of(st.just("queued"), _FIELD),
                                              "labels": _FIELD, "runner_name": _FIELD, "created_at": _FIELD})  # fmt: skip
    return draw(st.one_of(
        st.fixed_dictionaries({}, optional={"total_count": _FIELD, "runners": st.one_of(_FIELD, st.lists(runner, max_size=3))}),
        runner,
        st.lists(app, max_size=3),
        st.fixed_dictionaries({}, optional={"runner": st.one_of(_FIELD, runner), "encoded_jit_config": _FIELD}),
        st.fixed_dictionaries({}, optional={"token": _FIELD, "expires_at": _FIELD}),
        st.fixed_dictionaries({}, optional={"workflow_runs": st.one_of(_FIELD, st.lists(st.fixed_dictionaries({}, optional={"id": _FIELD}), max_size=3)),
                                            "jobs": st.one_of(_FIELD, st.lists(job, max_size=3))}),
        st.lists(st.fixed_dictionaries({}, optional={"full_name": _FIELD, "id": _FIELD}), max_size=3),
        st.fixed_dictionaries({}, optional={"runner_groups": st.one_of(_FIELD, st.lists(st.fixed_dictionaries({}, optional={"id": _FIELD, "name": st.one_of(_FIELD, st.just("builders"))}), max_size=3))}),
        _JSON,
    ))  # fmt: skip


@st.composite
def answers(draw: st.DrawFn, base: str) -> tuple[int, dict[str, str], bytes]:
    status = draw(st.sampled_from([200, 200, 200, 200, 201, 204, 304, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503]))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        body = draw(st.binary(max_size=100))
    elif kind == 1:
        text = json.dumps(draw(shaped()))
        body = text[: draw(st.integers(0, len(text)))].encode()
    else:
        body = json.dumps(draw(shaped())).encode()
    headers: dict[str, str] = {"Content-Type": "application/json"}
    header_text = st.text(max_size=40, alphabet=st.characters(min_codepoint=32, max_codepoint=126))
    for name, values in (
        ("Link", st.one_of(header_text, st.sampled_from([f'<{base}/next?page=2>; rel="next"', '<http://evil.example/x>; rel="next"',
                                                          '<http://[bad>; rel="next"', f"<{base}/x>; rel=next", "<>; rel=\"next\""]))),
        ("retry-after", st.one_of(header_text, st.sampled_from(["0", "1", "3600", "-5", "1e9", "Wed, 21 Oct 2015 07:28:00 GMT", "nan", "inf"]))),
        ("x-ratelimit-remaining", st.one_of(header_text, st.sampled_from(["0", "1", "-1", "5000", "nan", "1e999"]))),
        ("x-ratelimit-limit", st.one_of(header_text, st.sampled_from(["0", "5000", "-3", "inf"]))),
        ("x-ratelimit-reset", st.one_of(header_text, st.sampled_from(["0", "9999999999", "-1", "1e300", "nan"]))),
        ("ETag", st.one_of(header_text, st.just('W/"abc"'))),
    ):  # fmt: skip
        if draw(st.integers(0, 3)) == 0:
            headers[name] = draw(values)
    return status, headers, body


CALLS = ["list_runners", "get_runner", "delete_runner", "generate_jit_config", "registration_token", "remove_token",
         "runner_group_id", "runner_applications", "list_org_repos", "queued_jobs", "list_hooks", "hook_deliveries",
         "redeliver"]  # fmt: skip


def call(client: GitHubClient, name: str) -> Any:
    path = GitHubPath.parse("acme")
    if name == "list_runners":
        return client.list_runners(path)
    if name == "get_runner":
        return client.get_runner(path, 7)
    if name == "delete_runner":
        return client.delete_runner(path, 7)
    if name == "generate_jit_config":
        return client.generate_jit_config(path, "ghr-small-x", ["self-hosted"], 1)
    if name == "registration_token":
        return client.registration_token(path)
    if name == "remove_token":
        return client.remove_token(path)
    if name == "runner_group_id":
        return client.runner_group_id("acme", "builders")
    if name == "runner_applications":
        return client.runner_applications(path)
    if name == "list_org_repos":
        return client.list_org_repos("acme")
    if name == "queued_jobs":
        return client.queued_jobs(["acme/app"])
    if name == "list_hooks":
        return client.list_hooks(path)
    if name == "hook_deliveries":
        return client.hook_deliveries(path, 3)
    if name == "redeliver":
        return client.redeliver(path, 3, 4)
    raise AssertionError(name)


def test_fuzz_github_responses(scripted: Scripted) -> None:
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(answer=answers(scripted.url), method=st.sampled_from(CALLS), second=st.one_of(st.none(), answers(scripted.url)))
    @example(answer=(200, {}, b"[" * 5_000), method="runner_applications", second=None)
    @example(answer=(200, {}, b'{"runners": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"), method="list_runners", second=None)
    @example(answer=(200, {"Link": '<http://[bad>; rel="next"'}, b'{"runners": []}'), method="list_runners", second=None)
    @example(answer=(200, {}, b'{"workflow_runs": [{"id": 1}], "jobs": [{"id": 1, "status": "queued", "run_id": "x"}]}'), method="queued_jobs", second=None)
    @example(answer=(200, {}, b'{"workflow_runs": [{"id": 1}], "jobs": [{"id": 1, "status": "queued", "labels": 5}]}'), method="queued_jobs", second=None)
    @example(answer=(429, {"retry-after": "1e400"}, b"{}"), method="list_runners", second=None)
    @example(answer=(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1e300"}, b"{}"), method="list_runners", second=None)
    def check(answer: tuple[int, dict[str, str], bytes], method: str, second: Any) -> None:
        fake = FakeTime()
        client = GitHubClient(scripted.url, TOKEN, timeout=5, sleep=fake.sleep, clock=fake.clock, max_attempts=2,
                              backoff_initial=0.01)  # fmt: skip
        try:
            for current in [answer] + ([second] if second is not None else []):
                scripted.answer = current
                try:
                    call(client, method)
                    outcomes["ok"] += 1
                except GitHubError as exc:
                    outcomes[type(exc).__name__] += 1
                    assert TOKEN not in str(exc)
        finally:
            client.close()

    check()
    print(f"\nGitHub response fuzz: {dict(outcomes)}")
    assert outcomes["ok"] > 50 and outcomes["GitHubError"] > 50, outcomes


def test_malformed_json_from_the_emulator_is_a_github_error(gh: Any) -> None:
    """The emulator's ``malformed`` fault (a 200 whose JSON is cut in half) on every route."""
    gh.control.fault(route="*", malformed=True)
    gh.control.fault(route="/_emulator/runner-app/*", malformed=True)
    client = GitHubClient(gh.url, TOKEN, timeout=5, max_attempts=2, backoff_initial=0.01)
    seen: Counter[str] = Counter()
    try:
        for method in CALLS:
            try:
                call(client, method)
                seen["ok"] += 1
            except GitHubError:
                seen["GitHubError"] += 1
    finally:
        client.close()
    assert seen["GitHubError"] >= len(CALLS) - 3, seen  # 204/404 answers carry no JSON to cut
