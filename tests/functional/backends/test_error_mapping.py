"""How each backend classifies its client library's exceptions: the class and message of the contract error.

No part is needed: a backend is built from settings that make no connection, and exceptions as its client
library raises them go through ``with backend._errors(action)``. The contract tests (test_contract.py)
show the same classes coming out of real parts; this table covers the paths no part can be made to take.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import botocore.exceptions
import docker.errors
import google.auth.exceptions
import keystoneauth1.exceptions as ksa_exc
import openstack.exceptions as os_exc
import pytest
import requests
from google.api_core import exceptions as gexc
from pylxd import exceptions as lxd_exc
from pyVmomi import vim, vmodl

from github_runner_manager.backends.base import (
    AuthError,
    Backend,
    BackendError,
    CapacityError,
    InstanceNotFound,
)
from github_runner_manager.backends.registry import create_backend
from tests.functional.backends.harnesses import MINIMAL_SETTINGS

SETTINGS = MINIMAL_SETTINGS


def _response(status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    return response


def _client_error(code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "said EC2"}}, "RunInstances"
    )


def _lxd(status: int, error: str) -> lxd_exc.LXDAPIException:
    return lxd_exc.LXDAPIException(_response(status, {"error": error}))


CASES: list[tuple[str, Exception, type[BackendError], str]] = [
    ("aws", _client_error("AuthFailure"), AuthError, "aws: doing: AuthFailure: said EC2"),
    (
        "aws",
        _client_error("InsufficientInstanceCapacity"),
        CapacityError,
        "aws: doing: InsufficientInstanceCapacity: said EC2",
    ),
    (
        "aws",
        _client_error("InvalidInstanceID.NotFound"),
        InstanceNotFound,
        "aws: doing: InvalidInstanceID.NotFound: said EC2",
    ),
    ("aws", _client_error("Throttling"), BackendError, "aws: doing: Throttling: said EC2"),
    (
        "aws",
        botocore.exceptions.NoCredentialsError(),
        AuthError,
        "aws: doing: Unable to locate credentials",
    ),
    (
        "aws",
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://ec2"),
        BackendError,
        'aws: doing: Could not connect to the endpoint URL: "http://ec2"',
    ),
    ("gcp", gexc.NotFound("no such instance"), InstanceNotFound, "gcp: doing: no such instance"),
    (
        "gcp",
        gexc.Unauthorized("bad token"),
        AuthError,
        "gcp: doing: credentials rejected: bad token",
    ),
    (
        "gcp",
        gexc.Forbidden("over", errors=[{"reason": "quotaExceeded"}]),
        CapacityError,
        "gcp: doing: over",
    ),
    ("gcp", gexc.Forbidden("not yours"), AuthError, "gcp: doing: permission denied: not yours"),
    (
        "gcp",
        gexc.TooManyRequests("QUOTA_EXCEEDED for cpus"),
        CapacityError,
        "gcp: doing: QUOTA_EXCEEDED for cpus",
    ),
    ("gcp", gexc.TooManyRequests("slow down"), BackendError, "gcp: doing: rate limited: slow down"),
    ("gcp", gexc.InternalServerError("oops"), BackendError, "gcp: doing: 500 oops"),
    (
        "gcp",
        google.auth.exceptions.RefreshError("expired"),
        AuthError,
        "gcp: doing: credentials unusable: expired",
    ),
    (
        "gcp",
        gexc.RetryError("gave up", cause=None),
        BackendError,
        "gcp: doing: gave up, last exception: None",
    ),
    ("gcp", requests.exceptions.ConnectionError("refused"), BackendError, "gcp: doing: refused"),
    (
        "openstack",
        os_exc.NotFoundException("no server"),
        InstanceNotFound,
        "openstack: doing: no server",
    ),
    (
        "openstack",
        os_exc.HttpException("who", http_status=401),
        AuthError,
        "openstack: doing: 401: who",
    ),
    (
        "openstack",
        os_exc.HttpException("Quota exceeded for cores", http_status=403),
        CapacityError,
        "openstack: doing: 403: Quota exceeded for cores",
    ),
    (
        "openstack",
        os_exc.HttpException("policy", http_status=403),
        AuthError,
        "openstack: doing: 403: policy",
    ),
    (
        "openstack",
        os_exc.HttpException("broken", http_status=500),
        BackendError,
        "openstack: doing: 500: broken",
    ),
    (
        "openstack",
        ksa_exc.AuthorizationFailure("no token"),
        AuthError,
        "openstack: doing: credentials rejected: no token",
    ),
    (
        "openstack",
        ksa_exc.Forbidden("not here"),
        AuthError,
        "openstack: doing: forbidden: not here (HTTP 403)",
    ),
    (
        "openstack",
        ksa_exc.ConnectFailure("refused"),
        BackendError,
        "openstack: doing: refused",
    ),
    ("openstack", os_exc.SDKException("odd"), BackendError, "openstack: doing: odd"),
    (
        "docker",
        docker.errors.ImageNotFound("x", explanation="no such image: r"),
        BackendError,
        "docker: doing: image not found on unix:///var/run/docker.sock (no registry is used: "
        "`docker import ROOTFS.tar NAME` first): no such image: r",
    ),
    (
        "docker",
        docker.errors.NotFound("x", explanation="no such container"),
        InstanceNotFound,
        "docker: doing: no such container",
    ),
    (
        "docker",
        docker.errors.APIError("x", explanation="no space left on device"),
        CapacityError,
        "docker: doing: no space left on device",
    ),
    (
        "docker",
        docker.errors.APIError("x", response=_response(403, {}), explanation="authz plugin"),
        AuthError,
        "docker: doing: the daemon refused us: authz plugin",
    ),
    (
        "docker",
        docker.errors.APIError("x", explanation="conflict"),
        BackendError,
        "docker: doing: conflict",
    ),
    (
        "docker",
        requests.exceptions.SSLError("bad certificate"),
        AuthError,
        "docker: doing: TLS handshake with the daemon failed: bad certificate",
    ),
    (
        "docker",
        PermissionError("denied"),
        AuthError,
        "docker: doing: no permission to use unix:///var/run/docker.sock: denied",
    ),
    (
        "docker",
        docker.errors.DockerException("Permission denied on the socket"),
        AuthError,
        "docker: doing: no permission to use unix:///var/run/docker.sock: "
        "Permission denied on the socket",
    ),
    (
        "docker",
        requests.exceptions.ConnectionError("refused"),
        BackendError,
        "docker: doing: daemon unreachable or failing: refused",
    ),
    (
        "vsphere",
        vim.fault.InsufficientResourcesFault(msg="no room"),
        CapacityError,
        "vsphere: doing: InsufficientResourcesFault: no room",
    ),
    (
        "vsphere",
        vim.fault.InvalidLogin(msg="wrong password"),
        AuthError,
        "vsphere: doing: InvalidLogin: wrong password",
    ),
    (
        "vsphere",
        vmodl.fault.ManagedObjectNotFound(msg="vm-1"),
        InstanceNotFound,
        "vsphere: doing: ManagedObjectNotFound: vm-1",
    ),
    (
        "vsphere",
        vmodl.fault.InvalidArgument(msg="spec"),
        BackendError,
        "vsphere: doing: InvalidArgument: spec",
    ),
    (
        "vsphere",
        ssl.SSLError(1, "certificate verify failed"),
        BackendError,
        "vsphere: doing: TLS failed (certificate verify failed); "
        "give ca_file, or insecure: true for a lab",
    ),
    ("vsphere", ConnectionRefusedError("refused"), BackendError, "vsphere: doing: refused"),
    ("vsphere", ValueError("odd reply"), BackendError, "vsphere: doing: odd reply"),
    (
        "lxd",
        lxd_exc.NotFound(_response(404, {"error": "not found"})),
        InstanceNotFound,
        "doing: not found",
    ),
    ("lxd", _lxd(403, "not allowed"), AuthError, "doing: LXD refused: not allowed"),
    (
        "lxd",
        _lxd(400, "Certificate is not trusted"),
        AuthError,
        "doing: LXD refused: Certificate is not trusted",
    ),
    (
        "lxd",
        _lxd(500, "No space left on device"),
        CapacityError,
        "doing: LXD is out of resources: No space left on device",
    ),
    ("lxd", _lxd(500, "boom"), BackendError, "doing: boom"),
    (
        "lxd",
        requests.exceptions.SSLError("handshake"),
        AuthError,
        "doing: TLS error talking to LXD: handshake",
    ),
    (
        "lxd",
        lxd_exc.ClientConnectionFailed("gone"),
        BackendError,
        "doing: cannot reach LXD: gone",
    ),
    (
        "lxd",
        requests.exceptions.ReadTimeout("slow"),
        BackendError,
        "doing: LXD did not answer within 60.0s",
    ),
]


def _backend(name: str) -> Backend:
    return create_backend(name, SETTINGS.get(name, {}), prefix="ghr")


@pytest.mark.parametrize(
    ("name", "raised", "expected", "message"),
    CASES,
    ids=[f"{c[0]}-{type(c[1]).__name__}-{c[2].__name__}" for c in CASES],
)
def test_provider_errors_become_contract_errors(
    name: str, raised: Exception, expected: type[BackendError], message: str
) -> None:
    backend = _backend(name)
    with pytest.raises(BackendError) as caught, backend._errors("doing"):
        raise raised
    assert type(caught.value) is expected
    assert str(caught.value) == message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    backend.close()


@pytest.mark.parametrize("name", ["aws", "gcp", "openstack", "docker", "vsphere", "lxd"])
def test_contract_errors_and_foreign_exceptions_pass_through(name: str) -> None:
    backend = _backend(name)
    capacity = CapacityError("already classified")
    with pytest.raises(CapacityError) as caught, backend._errors("doing"):
        raise capacity
    assert caught.value is capacity
    with pytest.raises(KeyError), backend._errors("doing"):
        raise KeyError("not a provider error")
    backend.close()


def test_lxd_names_a_missing_image_alias() -> None:
    backend = _backend("lxd")
    hint = (
        "image alias 'runner' not found in LXD; build it first "
        "(github-runner-manager build-image, or scripts/build-runner-image.sh)"
    )
    for raised in (
        lxd_exc.NotFound(_response(404, {"error": "Image not found"})),
        _lxd(500, "Failed getting image: not found"),
    ):
        with pytest.raises(BackendError) as caught, backend._errors("creating", image="runner"):
            raise raised
        assert type(caught.value) is BackendError and str(caught.value) == f"creating: {hint}"


def test_lxd_drops_its_client_when_lxd_is_unreachable() -> None:
    backend = _backend("lxd")
    backend._local.client = object()  # type: ignore[attr-defined]
    with pytest.raises(BackendError), backend._errors("listing"):
        raise requests.exceptions.ConnectionError("refused")
    assert backend._local.client is None  # type: ignore[attr-defined]
