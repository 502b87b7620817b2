"""A small Keystone v3 + Nova (+ the Glance/Neutron lookups) emulator for the OpenStack backend.

Served by werkzeug on loopback; ``openstacksdk`` talks to it as to a cloud
(``tests/functional/backends/test_emulators.py`` proves it with that client):

* Keystone: ``GET /v3``, ``POST /v3/auth/tokens`` (password method; 201 with ``X-Subject-Token`` and a
  token carrying a catalog of ``compute``, ``image`` and ``network`` endpoints), ``GET /v3/auth/tokens``.
* Nova (``/compute/v2.1``): version document (microversions 2.1 to 2.96), ``GET /servers/detail``
  (``name`` is a regex, as Nova's), ``POST /servers`` (202), ``GET|DELETE /servers/ID``,
  ``GET /flavors``, ``/flavors/detail``, ``/flavors/ID``. Servers go from ``BUILD`` to ``ACTIVE``
  after ``build_polls`` looks; ``user_data`` is kept and shown as ``OS-EXT-SRV-ATTR:user_data``.
* Glance (``/image/v2/images``) and Neutron (``/network/v2.0/networks``): list (``name`` filter) and
  get by id, so names in the settings resolve.

Test knobs (attributes of :class:`OpenStackEmulator`): ``users`` (name → password; a wrong one
answers 401), ``quota`` (servers allowed; beyond it ``POST /servers`` answers 403 "Quota exceeded"),
``no_valid_host`` (new servers end in ``ERROR`` with the scheduler's fault), ``build_polls``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

REGION = "RegionOne"
#: Endpoints answered without a token, as Keystone and the version documents are.
NO_TOKEN = frozenset(
    {
        "root",
        "identity_version",
        "tokens",
        "compute_versions",
        "compute_version",
        "image_versions",
        "network_versions",
    }
)
MAX_MICROVERSION = "2.96"


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log on the test output."""


class NovaError(HTTPException):
    """An error in the shape Nova and Keystone answer with."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(description=message)
        self.code = code
        self.body = {kind: {"code": code, "message": message}}
        if kind == "error":
            self.body = {"error": {"code": code, "message": message, "title": kind}}

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        return Response(json.dumps(self.body), status=self.code, mimetype="application/json")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class OpenStackEmulator:
    """In-process Keystone + Nova emulator; ``auth_url`` is what ``openstack.connect`` takes."""

    users: dict[str, str] = field(default_factory=lambda: {"runner": "secret"})
    project: str = "runners"
    quota: int | None = None
    no_valid_host: bool = False
    build_polls: int = 1
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    flavors: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"id": "1", "name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1},
            {"id": "2", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
            {"id": "3", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
            {"id": "4", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
            {"id": "5", "name": "m1.xlarge", "vcpus": 8, "ram": 16384, "disk": 160},
        ]
    )
    images: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"id": "5f0e8c2e-7a56-4c5b-9c0e-1d2b3c4d5e6f", "name": "github-runner-debian-bookworm"}
        ]
    )
    networks: list[dict[str, Any]] = field(
        default_factory=lambda: [{"id": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "name": "runners"}]
    )
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._tokens: dict[str, str] = {}
        self._project_id = uuid.uuid4().hex
        self._server: BaseWSGIServer | None = None
        self._routes = Map(
            [
                Rule("/", endpoint="root", methods=["GET"]),
                Rule("/v3", endpoint="identity_version", methods=["GET"], strict_slashes=False),
                Rule("/v3/auth/tokens", endpoint="tokens", methods=["GET", "POST", "HEAD"]),
                Rule(
                    "/compute", endpoint="compute_versions", methods=["GET"], strict_slashes=False
                ),
                Rule(
                    "/compute/v2.1",
                    endpoint="compute_version",
                    methods=["GET"],
                    strict_slashes=False,
                ),
                Rule("/compute/v2.1/servers", endpoint="servers", methods=["GET", "POST"]),
                Rule("/compute/v2.1/servers/detail", endpoint="servers_detail", methods=["GET"]),
                Rule("/compute/v2.1/servers/<sid>", endpoint="server", methods=["GET", "DELETE"]),
                Rule("/compute/v2.1/flavors", endpoint="flavors", methods=["GET"]),
                Rule("/compute/v2.1/flavors/detail", endpoint="flavors", methods=["GET"]),
                Rule("/compute/v2.1/flavors/<fid>", endpoint="flavor", methods=["GET"]),
                Rule("/image", endpoint="image_versions", methods=["GET"], strict_slashes=False),
                Rule("/image/v2/images", endpoint="images", methods=["GET"]),
                Rule("/image/v2/images/<iid>", endpoint="image", methods=["GET"]),
                Rule(
                    "/network", endpoint="network_versions", methods=["GET"], strict_slashes=False
                ),
                Rule("/network/v2.0/networks", endpoint="networks", methods=["GET"]),
                Rule("/network/v2.0/networks/<nid>", endpoint="network", methods=["GET"]),
            ]
        )

    # ------------------------------------------------------------------ serving
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the emulator first"
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/v3"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> OpenStackEmulator:
        self._server = make_server(host, port, self.wsgi, threaded=True, request_handler=_Quiet)
        threading.Thread(
            target=self._server.serve_forever, name="openstack-emulator", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reset(self) -> None:
        """Forget servers and tokens and clear the knobs (users are kept)."""
        with self._lock:
            self.servers.clear()
            self._tokens.clear()
            self.requests.clear()
            self.quota, self.no_valid_host, self.build_polls = None, False, 1

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            endpoint, args = self._routes.bind_to_environ(environ).match()
            self.requests.append((request.method, request.full_path.rstrip("?")))
            if endpoint not in NO_TOKEN:
                self._check_token(request)
            method = "get" if request.method == "HEAD" else request.method.lower()
            with self._lock:
                result = getattr(self, f"_{endpoint}_{method}")(request, **args)
            if isinstance(result, Response):
                response = result
            else:
                response = Response(json.dumps(result), mimetype="application/json")
            if endpoint.startswith(("server", "flavor", "compute")):
                response.headers["OpenStack-API-Version"] = (
                    request.headers.get("OpenStack-API-Version") or "compute 2.1"
                )
                response.headers["Vary"] = "OpenStack-API-Version"
        except NovaError as exc:
            response = exc.get_response()
        except HTTPException as exc:
            response = NovaError(
                exc.code or 500,
                "itemNotFound" if exc.code == 404 else "badRequest",
                exc.description or "",
            ).get_response()
        return response(environ, start_response)

    def _check_token(self, request: Request) -> None:
        if request.headers.get("X-Auth-Token", "") not in self._tokens:
            raise NovaError(401, "error", "The request you have made requires authentication.")

    # ------------------------------------------------------------------ keystone
    def _root_get(self, request: Request) -> dict[str, Any]:
        return {"versions": {"values": [self._identity_version_get(request)["version"]]}}

    def _identity_version_get(self, request: Request) -> dict[str, Any]:
        return {
            "version": {
                "id": "v3.14",
                "status": "stable",
                "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{self.url}/v3/"}],
                "media-types": [
                    {
                        "base": "application/json",
                        "type": "application/vnd.openstack.identity-v3+json",
                    }
                ],
            }
        }

    def _catalog(self) -> list[dict[str, Any]]:
        def entry(kind: str, name: str, path: str) -> dict[str, Any]:
            return {
                "type": kind,
                "name": name,
                "id": uuid.uuid5(uuid.NAMESPACE_URL, kind).hex,
                "endpoints": [
                    {
                        "id": uuid.uuid5(uuid.NAMESPACE_URL, kind + "public").hex,
                        "interface": "public",
                        "region": REGION,
                        "region_id": REGION,
                        "url": f"{self.url}{path}",
                    }
                ],
            }

        return [
            entry("identity", "keystone", "/v3"),
            entry("compute", "nova", "/compute/v2.1"),
            entry("image", "glance", "/image"),
            entry("network", "neutron", "/network"),
        ]

    def _tokens_post(self, request: Request) -> Response:
        try:
            auth = json.loads(request.get_data() or b"{}")["auth"]
            user = auth["identity"]["password"]["user"]
        except (ValueError, KeyError, TypeError):
            raise NovaError(
                400, "error", "Expecting to find auth.identity.password.user in the request."
            ) from None
        name, password = str(user.get("name", "")), str(user.get("password", ""))
        if name not in self.users or not secrets.compare_digest(self.users[name], password):
            raise NovaError(401, "error", "The request you have made requires authentication.")
        token = secrets.token_hex(16)
        self._tokens[token] = name
        issued = _now()
        domain = {"id": "default", "name": "Default"}
        body = {
            "token": {
                "methods": ["password"],
                "issued_at": _iso(issued),
                "expires_at": _iso(issued + timedelta(hours=1)),
                "user": {
                    "id": uuid.uuid5(uuid.NAMESPACE_URL, name).hex,
                    "name": name,
                    "domain": domain,
                    "password_expires_at": None,
                },
                "project": {"id": self._project_id, "name": self.project, "domain": domain},
                "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_URL, "member").hex, "name": "member"}],
                "catalog": self._catalog(),
                "is_domain": False,
            }
        }
        response = Response(json.dumps(body), status=201, mimetype="application/json")
        response.headers["X-Subject-Token"] = token
        return response

    def _tokens_get(self, request: Request) -> dict[str, Any]:
        self._check_token(request)
        if request.headers.get("X-Subject-Token", "") not in self._tokens:
            raise NovaError(404, "error", "Could not find token.")
        return {"token": {"methods": ["password"], "catalog": self._catalog()}}

    # ------------------------------------------------------------------ nova
    def _version_doc(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": MAX_MICROVERSION,
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/"}],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.compute+json;version=2.1",
                }
            ],
        }

    def _compute_versions_get(self, request: Request) -> dict[str, Any]:
        return {"versions": [self._version_doc()]}

    def _compute_version_get(self, request: Request) -> dict[str, Any]:
        return {"version": self._version_doc()}

    def _advance(self, server: dict[str, Any]) -> dict[str, Any]:
        server["_looks"] += 1
        if server["status"] == "BUILD" and server["_looks"] >= self.build_polls:
            if server["_no_valid_host"]:
                server.update(
                    {
                        "status": "ERROR",
                        "OS-EXT-STS:vm_state": "error",
                        "OS-EXT-STS:task_state": None,
                    },
                    fault={
                        "code": 500,
                        "created": _iso(_now()),
                        "message": "No valid host was found. There are not enough hosts available.",
                    },
                )
            else:
                server.update(
                    {
                        "status": "ACTIVE",
                        "OS-EXT-STS:vm_state": "active",
                        "OS-EXT-STS:task_state": None,
                        "OS-EXT-STS:power_state": 1,
                    }
                )
        return {k: v for k, v in server.items() if not k.startswith("_")}

    def _servers_post(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")["server"]
        except (ValueError, KeyError, TypeError):
            raise NovaError(400, "badRequest", "Malformed request body") from None
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise NovaError(400, "badRequest", "Invalid input for field/attribute name.")
        flavor = self._find(self.flavors, str(body.get("flavorRef", "")), "Flavor")
        image_ref = str(body.get("imageRef", ""))
        if not any(i["id"] == image_ref for i in self.images):
            raise NovaError(400, "badRequest", f"Image {image_ref} could not be found.")
        networks = body.get("networks")
        if networks is None:
            raise NovaError(
                400,
                "badRequest",
                "Invalid input for field/attribute networks (required since 2.37).",
            )
        if isinstance(networks, list):
            for net in networks:
                if not any(n["id"] == net.get("uuid") for n in self.networks):
                    raise NovaError(
                        400, "badRequest", f"Network {net.get('uuid')} could not be found."
                    )
        metadata = body.get("metadata") or {}
        for key, value in metadata.items():
            if not isinstance(value, str) or len(key) > 255 or len(value) > 255:
                raise NovaError(
                    400, "badRequest", f"Invalid input for field/attribute metadata: {key}"
                )
        if self.quota is not None and len(self.servers) >= self.quota:
            raise NovaError(
                403,
                "forbidden",
                f"Quota exceeded for instances: Requested 1, but already used {len(self.servers)} of {self.quota} instances",
            )
        sid = str(uuid.uuid4())
        created = _iso(_now())
        net_name = (
            self.networks[0]["name"]
            if networks == "auto"
            else next(n["name"] for n in self.networks if n["id"] == networks[0]["uuid"])
            if networks
            else None
        )
        self.servers[sid] = {
            "id": sid,
            "name": name,
            "status": "BUILD",
            "tenant_id": self._project_id,
            "user_id": uuid.uuid5(
                uuid.NAMESPACE_URL, self._tokens[request.headers["X-Auth-Token"]]
            ).hex,
            "metadata": metadata,
            "created": created,
            "updated": created,
            "hostId": "",
            "addresses": {
                net_name: [
                    {
                        "addr": f"192.168.0.{len(self.servers) % 250 + 2}",
                        "version": 4,
                        "OS-EXT-IPS:type": "fixed",
                    }
                ]
            }
            if net_name
            else {},
            "flavor": {
                "original_name": flavor["name"],
                "vcpus": flavor["vcpus"],
                "ram": flavor["ram"],
                "disk": flavor["disk"],
                "ephemeral": 0,
                "swap": 0,
            },
            "image": {"id": image_ref},
            "key_name": body.get("key_name"),
            "security_groups": body.get("security_groups") or [{"name": "default"}],
            "OS-EXT-SRV-ATTR:user_data": body.get("user_data"),
            "OS-EXT-STS:vm_state": "building",
            "OS-EXT-STS:task_state": "scheduling",
            "OS-EXT-STS:power_state": 0,
            "OS-EXT-AZ:availability_zone": body.get("availability_zone") or "nova",
            "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/servers/{sid}"}],
            "_looks": 0,
            "_no_valid_host": self.no_valid_host,
        }
        reply = {
            "server": {
                "id": sid,
                "links": self.servers[sid]["links"],
                "OS-DCF:diskConfig": "MANUAL",
                "security_groups": self.servers[sid]["security_groups"],
                "adminPass": secrets.token_urlsafe(9),
            }
        }
        return Response(json.dumps(reply), status=202, mimetype="application/json")

    def _select(self, request: Request) -> list[dict[str, Any]]:
        pattern = request.args.get("name")
        found = []
        for server in sorted(self.servers.values(), key=lambda s: (s["created"], s["id"])):
            if pattern is not None and re.search(pattern, server["name"]) is None:
                continue
            if request.args.get("status") and server["status"] != request.args["status"].upper():
                continue
            found.append(self._advance(server))
        return found

    def _servers_get(self, request: Request) -> dict[str, Any]:
        return {
            "servers": [
                {"id": s["id"], "name": s["name"], "links": s["links"]}
                for s in self._select(request)
            ]
        }

    def _servers_detail_get(self, request: Request) -> dict[str, Any]:
        return {"servers": self._select(request)}

    def _server_get(self, request: Request, sid: str) -> dict[str, Any]:
        server = self.servers.get(sid)
        if server is None:
            raise NovaError(404, "itemNotFound", f"Instance {sid} could not be found.")
        return {"server": self._advance(server)}

    def _server_delete(self, request: Request, sid: str) -> Response:
        if self.servers.pop(sid, None) is None:
            raise NovaError(404, "itemNotFound", f"Instance {sid} could not be found.")
        return Response(status=204)

    def _find(self, items: list[dict[str, Any]], ref: str, kind: str) -> dict[str, Any]:
        for item in items:
            if item["id"] == ref:
                return item
        raise NovaError(
            404 if kind != "Flavor" else 400,
            "itemNotFound" if kind != "Flavor" else "badRequest",
            f"{kind} {ref} could not be found.",
        )

    def _flavor_doc(self, flavor: dict[str, Any]) -> dict[str, Any]:
        return {
            **flavor,
            "OS-FLV-EXT-DATA:ephemeral": 0,
            "OS-FLV-DISABLED:disabled": False,
            "os-flavor-access:is_public": True,
            "swap": 0,
            "rxtx_factor": 1.0,
            "description": None,
            "extra_specs": {},
            "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/flavors/{flavor['id']}"}],
        }

    def _flavors_get(self, request: Request) -> dict[str, Any]:
        return {
            "flavors": [
                self._flavor_doc(f)
                for f in self.flavors
                if request.args.get("name") in (None, f["name"])
            ]
        }

    def _flavor_get(self, request: Request, fid: str) -> dict[str, Any]:
        for flavor in self.flavors:
            if flavor["id"] == fid:
                return {"flavor": self._flavor_doc(flavor)}
        raise NovaError(404, "itemNotFound", f"Flavor {fid} could not be found.")

    # ------------------------------------------------------------------ glance / neutron lookups
    def _image_versions_get(self, request: Request) -> dict[str, Any]:
        return {
            "versions": [
                {
                    "id": "v2.16",
                    "status": "CURRENT",
                    "links": [{"rel": "self", "href": f"{self.url}/image/v2/"}],
                }
            ]
        }

    def _image_doc(self, image: dict[str, Any]) -> dict[str, Any]:
        return {
            **image,
            "status": "active",
            "visibility": "private",
            "disk_format": "qcow2",
            "container_format": "bare",
            "self": f"/v2/images/{image['id']}",
        }

    def _images_get(self, request: Request) -> dict[str, Any]:
        wanted = request.args.get("name")
        return {
            "images": [self._image_doc(i) for i in self.images if wanted in (None, i["name"])],
            "first": "/v2/images",
            "schema": "/v2/schemas/images",
        }

    def _image_get(self, request: Request, iid: str) -> dict[str, Any]:
        for image in self.images:
            if image["id"] == iid:
                return self._image_doc(image)
        raise NovaError(404, "itemNotFound", f"No image found with ID {iid}")

    def _network_versions_get(self, request: Request) -> dict[str, Any]:
        return {
            "versions": [
                {
                    "id": "v2.0",
                    "status": "CURRENT",
                    "links": [{"rel": "self", "href": f"{self.url}/network/v2.0/"}],
                }
            ]
        }

    def _network_doc(self, network: dict[str, Any]) -> dict[str, Any]:
        return {
            **network,
            "status": "ACTIVE",
            "admin_state_up": True,
            "shared": False,
            "subnets": [],
            "tenant_id": self._project_id,
            "project_id": self._project_id,
        }

    def _networks_get(self, request: Request) -> dict[str, Any]:
        wanted = request.args.get("name")
        return {
            "networks": [self._network_doc(n) for n in self.networks if wanted in (None, n["name"])]
        }

    def _network_get(self, request: Request, nid: str) -> dict[str, Any]:
        for network in self.networks:
            if network["id"] == nid:
                return {"network": self._network_doc(network)}
        raise NovaError(404, "itemNotFound", f"Network {nid} could not be found.")


def start_openstack_emulator(host: str = "127.0.0.1", port: int = 0) -> OpenStackEmulator:
    """Start an emulator on a free loopback port (``port=0``)."""
    return OpenStackEmulator().start(host, port)
