"""Helpers shared by the emulator's functional tests (imported by conftest and test modules)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

TOKEN = "ghp_emulatorTestToken0001"
ORG = "acme"
REPO = "acme/app"
ENTERPRISE = "bigcorp"
AUTH = {"Authorization": f"token {TOKEN}"}


def spec_dir_or_none() -> Path | None:
    """GitHub's API description: ``$GITHUB_API_SPEC_DIR`` if set, else ``../shared/github-api``
    next to the repository checkout (tests/functional/emulator → the repo root is parents[3])."""
    override = os.environ.get("GITHUB_API_SPEC_DIR")
    if override:
        candidate = Path(override)
    else:
        candidate = Path(__file__).resolve().parents[3] / ".." / "shared" / "github-api"
    if (candidate / "github-runners-api.json").is_file():
        return candidate.resolve()
    return None


def oas30_to_jsonschema(s: Any) -> Any:
    """OpenAPI 3.0 schema → JSON Schema (copied from shared/github-api/validate.py)."""
    if isinstance(s, list):
        return [oas30_to_jsonschema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {
        k: oas30_to_jsonschema(v)
        for k, v in s.items()
        if k not in ("nullable", "example", "examples", "discriminator", "xml", "externalDocs")
        and not k.startswith("x-")
    }
    if "properties" in s:
        out["properties"] = {k: oas30_to_jsonschema(v) for k, v in s["properties"].items()}
    if s.get("nullable") is True:
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif t is None:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    return [
        "{}: {}".format("/".join(map(str, e.absolute_path)) or "<root>", e.message[:200])
        for e in validator.iter_errors(instance)
    ]


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with a message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class HookReceiver:
    """A webhook endpoint on loopback that records deliveries and schema-checks workflow_job ones."""

    def __init__(self, webhook_spec: dict[str, Any]) -> None:
        self.schemas = webhook_spec["json_schema_octokit"]
        self.received: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.status = 200
        self.delay = 0.0
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        entry = {"headers": dict(request.headers), "body": body, "payload": None}
        if request.headers.get("X-GitHub-Event") == "workflow_job":
            payload = json.loads(body)
            entry["payload"] = payload
            schema = self.schemas.get(payload.get("action"))
            if schema is None:
                self.errors.append(f"unknown action {payload.get('action')!r}")
            else:
                errors = schema_errors(schema, payload)
                if errors:
                    self.errors.append(f"{payload.get('action')}: {errors[:5]}")
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.received.append(entry)
            status = self.status
        return Response("ok", status=status)(environ, start_response)

    def payloads(self, action: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                e["payload"]
                for e in self.received
                if e["payload"] is not None and (action is None or e["payload"]["action"] == action)
            ]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.received) >= count, timeout)
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
