"""A small Compute Engine REST emulator: the part of ``compute/v1`` the GCP backend uses.

Served by werkzeug on loopback, it speaks the JSON the official ``google-cloud-compute`` client sends
and parses (``tests/functional/backends/test_emulators.py`` proves it with that client):

* ``GET|POST /compute/v1/projects/P/zones/Z/instances`` -- list (``filter``, ``maxResults``,
  ``pageToken``) and insert (returns a zone operation);
* ``GET|DELETE …/instances/NAME`` -- get and delete (delete returns a zone operation);
* ``GET …/operations/OP`` and ``POST …/operations/OP/wait`` -- operations turn ``DONE`` after
  ``operation_polls`` looks, as GCE's do after a while.

Test knobs (attributes of :class:`GCEEmulator`, changed between requests):
``quota`` (instances allowed per zone, ``None`` = unlimited) with ``quota_mode`` ``"http"``
(insert answers 403 ``quotaExceeded``) or ``"operation"`` (the insert operation ends with
``QUOTA_EXCEEDED``, as GCE usually reports it); ``unauthorized`` (every call answers 401, as for
revoked credentials); ``required_token`` (only ``Authorization: Bearer TOKEN`` is accepted).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
#: ``(field eq "regex")``, ``field = "value*"`` and friends, joined by AND or blanks.
FILTER_TERM_RE = re.compile(
    r"""\(?\s*(?P<field>[A-Za-z][\w.-]*)\s*(?P<op>eq|ne|=|!=)\s*
        (?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s()]+)\s*\)?""",
    re.VERBOSE,
)


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log on the test output."""


class GCEError(HTTPException):
    """An error answered in Google's JSON error shape."""

    def __init__(self, code: int, message: str, reason: str, status: str = "") -> None:
        super().__init__(description=message)
        self.code = code
        self.payload = {
            "error": {
                "code": code,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
                **({"status": status} if status else {}),
            }
        }

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        return Response(json.dumps(self.payload), status=self.code, mimetype="application/json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _match_filter(text: str, instance: dict[str, Any]) -> bool:
    """True when the instance satisfies every term of a (subset of the) GCE filter syntax."""
    if not text.strip():
        return True
    if re.search(r"\bOR\b", text):
        raise GCEError(400, "OR is not supported by this emulator's filter", "invalid")
    consumed = re.sub(r"\bAND\b", " ", text)
    terms = list(FILTER_TERM_RE.finditer(consumed))
    leftover = FILTER_TERM_RE.sub(" ", consumed).strip()
    if not terms or leftover:
        raise GCEError(
            400,
            f"Invalid value for field 'filter': '{text}'. Invalid list filter expression.",
            "invalid",
        )
    for term in terms:
        name, op, raw = term.group("field"), term.group("op"), term.group("value")
        value = raw[1:-1] if raw[:1] in "\"'" else raw
        if raw[:1] == '"' and op in ("=", "!="):
            value = value.replace('\\"', '"')
        actual: Any = instance
        for part in name.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        actual_text = "" if actual is None else str(actual)
        if op in ("eq", "ne"):
            hit = re.fullmatch(value, actual_text) is not None
        else:
            pattern = "^" + ".*".join(re.escape(p) for p in value.split("*")) + "$"
            hit = actual is not None and re.match(pattern, actual_text) is not None
        if hit != (op in ("eq", "=")):
            return False
    return True


@dataclass
class GCEEmulator:
    """In-process Compute Engine emulator; ``start()`` serves it, ``url`` is its api_endpoint."""

    quota: int | None = None
    quota_mode: str = "operation"
    unauthorized: bool = False
    required_token: str | None = None
    operation_polls: int = 1
    instances: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(int(time.time() * 1000) % 10**12)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        base = "/compute/v1/projects/<project>/zones/<zone>"
        self._routes = Map(
            [
                Rule(f"{base}/instances", endpoint="instances", methods=["GET", "POST"]),
                Rule(f"{base}/instances/<name>", endpoint="instance", methods=["GET", "DELETE"]),
                Rule(f"{base}/operations/<op>", endpoint="operation", methods=["GET"]),
                Rule(f"{base}/operations/<op>/wait", endpoint="wait", methods=["POST"]),
            ]
        )

    # ------------------------------------------------------------------ serving
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the emulator first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> GCEEmulator:
        self._server = make_server(host, port, self.wsgi, threaded=True, request_handler=_Quiet)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gce-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reset(self) -> None:
        """Forget every instance and operation and clear the knobs."""
        with self._lock:
            self.instances.clear()
            self.operations.clear()
            self.requests.clear()
            self.quota, self.quota_mode = None, "operation"
            self.unauthorized, self.required_token = False, None
            self.operation_polls = 1

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            endpoint, args = self._routes.bind_to_environ(environ).match()
            self.requests.append((request.method, request.path))
            self._authenticate(request)
            handler = getattr(self, f"_{endpoint}_{request.method.lower()}")
            with self._lock:
                body = handler(request, **args)
            response = Response(json.dumps(body), mimetype="application/json")
        except GCEError as exc:
            response = exc.get_response()
        except HTTPException as exc:
            response = GCEError(
                exc.code or 500, exc.description or "error", "invalid"
            ).get_response()
        return response(environ, start_response)

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        if self.unauthorized or (
            self.required_token is not None and header != f"Bearer {self.required_token}"
        ):
            raise GCEError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                "authError",
                "UNAUTHENTICATED",
            )

    # ------------------------------------------------------------------ helpers
    def _base(self, project: str, zone: str) -> str:
        return f"{self.url}/compute/v1/projects/{project}/zones/{zone}"

    def _operation(
        self, project: str, zone: str, kind: str, target: str, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        op_id = next(self._ids)
        name = f"operation-{op_id}-{kind}"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(op_id),
            "name": name,
            "zone": self._base(project, zone),
            "operationType": kind,
            "targetLink": f"{self._base(project, zone)}/instances/{target}",
            "targetId": str(op_id),
            "status": "RUNNING",
            "progress": 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{self._base(project, zone)}/operations/{name}",
            "user": "emulator@example.invalid",
            "_polls": 0,
            "_error": error,
        }
        self.operations[(project, zone, name)] = op
        return self._public(op)

    @staticmethod
    def _public(op: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def _advance(self, project: str, zone: str, op_name: str) -> dict[str, Any]:
        op = self.operations.get((project, zone, op_name))
        if op is None:
            raise GCEError(
                404,
                f"The resource 'projects/{project}/zones/{zone}/operations/{op_name}' was not found",
                "notFound",
            )
        op["_polls"] += 1
        if op["status"] != "DONE" and op["_polls"] >= self.operation_polls:
            op.update(status="DONE", progress=100, endTime=_now())
            if op["_error"]:
                op["error"] = {"errors": [op["_error"]]}
                op["httpErrorStatusCode"] = 403 if op["_error"]["code"] == "QUOTA_EXCEEDED" else 400
                op["httpErrorMessage"] = (
                    "FORBIDDEN" if op["_error"]["code"] == "QUOTA_EXCEEDED" else "BAD REQUEST"
                )
            else:
                target = op["targetLink"].rsplit("/", 1)[-1]
                instance = self.instances.get((project, zone, target))
                if instance is not None and op["operationType"] == "insert":
                    instance["status"] = "RUNNING"
        return self._public(op)

    # ------------------------------------------------------------------ routes
    def _instances_get(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        selected = [
            inst
            for (p, z, _), inst in sorted(self.instances.items())
            if p == project and z == zone and _match_filter(request.args.get("filter", ""), inst)
        ]
        size = int(request.args.get("maxResults", 500) or 500)
        start = int(request.args.get("pageToken", 0) or 0)
        page = selected[start : start + size]
        body: dict[str, Any] = {
            "kind": "compute#instanceList",
            "id": f"projects/{project}/zones/{zone}/instances",
            "selfLink": f"{self._base(project, zone)}/instances",
        }
        if page:
            body["items"] = page
        if start + size < len(selected):
            body["nextPageToken"] = str(start + size)
        return body

    def _instances_post(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            raise GCEError(400, "Invalid JSON payload received.", "parseError") from None
        name = str(body.get("name", ""))
        if not NAME_RE.match(name):
            raise GCEError(
                400,
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'",
                "invalid",
            )
        for key, value in (body.get("labels") or {}).items():
            if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(str(value)):
                raise GCEError(
                    400, f"Invalid value for field 'resource.labels': '{key}={value}'", "invalid"
                )
        if not body.get("machineType"):
            raise GCEError(
                400,
                "Invalid value for field 'resource.machineType': ''. Machine type is required.",
                "invalid",
            )
        if (project, zone, name) in self.instances:
            raise GCEError(
                409,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                "alreadyExists",
            )
        in_zone = sum(1 for (p, z, _) in self.instances if p == project and z == zone)
        if self.quota is not None and in_zone >= self.quota:
            message = f"Quota 'INSTANCES' exceeded.  Limit: {float(self.quota)} in region {zone.rsplit('-', 1)[0]}."
            if self.quota_mode == "http":
                raise GCEError(403, message, "quotaExceeded")
            return self._operation(
                project, zone, "insert", name, {"code": "QUOTA_EXCEEDED", "message": message}
            )
        instance_id = str(next(self._ids))
        machine = str(body["machineType"])
        instance = {
            **body,
            "kind": "compute#instance",
            "id": instance_id,
            "status": "PROVISIONING",
            "creationTimestamp": _now(),
            "zone": self._base(project, zone),
            "machineType": machine
            if machine.startswith("http")
            else f"{self.url}/compute/v1/projects/{project}/{machine}",
            "selfLink": f"{self._base(project, zone)}/instances/{name}",
            "metadata": {
                **(body.get("metadata") or {}),
                "fingerprint": "ZW11bGF0b3I=",
                "kind": "compute#metadata",
            },
        }
        for index, nic in enumerate(instance.get("networkInterfaces") or []):
            nic.setdefault("name", f"nic{index}")
            nic.setdefault("networkIP", f"10.128.0.{(int(instance_id) % 250) + 2}")
        self.instances[(project, zone, name)] = instance
        return self._operation(project, zone, "insert", name)

    def _instance_get(self, request: Request, project: str, zone: str, name: str) -> dict[str, Any]:
        instance = self.instances.get((project, zone, name))
        if instance is None:
            raise GCEError(
                404,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
                "notFound",
            )
        return instance

    def _instance_delete(
        self, request: Request, project: str, zone: str, name: str
    ) -> dict[str, Any]:
        if self.instances.pop((project, zone, name), None) is None:
            raise GCEError(
                404,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
                "notFound",
            )
        return self._operation(project, zone, "delete", name)

    def _operation_get(self, request: Request, project: str, zone: str, op: str) -> dict[str, Any]:
        return self._advance(project, zone, op)

    def _wait_post(self, request: Request, project: str, zone: str, op: str) -> dict[str, Any]:
        # The real wait blocks until DONE or about two minutes; here every look advances the operation.
        body = self._advance(project, zone, op)
        while body["status"] != "DONE":
            body = self._advance(project, zone, op)
        return body


def start_gce_emulator(host: str = "127.0.0.1", port: int = 0) -> GCEEmulator:
    """Start an emulator on a free loopback port (``port=0``)."""
    return GCEEmulator().start(host, port)
