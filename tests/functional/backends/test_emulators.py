"""The GCE and OpenStack emulators, proved with the official clients doing what the backends do.

If a client library changes what it sends or expects, these fail before the backend tests do, and say
which operation moved.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


# --------------------------------------------------------------------------- GCE

PROJECT, ZONE = "emu-project", "europe-west1-b"


def _gce_clients(url: str, credentials: Any = None) -> tuple[Any, Any]:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    options = ClientOptions(api_endpoint=url)
    credentials = credentials or AnonymousCredentials()
    return (
        compute_v1.InstancesClient(credentials=credentials, client_options=options),
        compute_v1.ZoneOperationsClient(credentials=credentials, client_options=options),
    )


def _gce_instance(name: str, **labels: str) -> Any:
    from google.cloud import compute_v1

    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{ZONE}/machineTypes/e2-small",
        labels=labels,
        metadata=compute_v1.Metadata(
            items=[compute_v1.Items(key="user-data", value="#cloud-config\n")]
        ),
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image="projects/debian-cloud/global/images/family/debian-12"
                ),
            )
        ],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
    )


def test_gce_insert_get_list_delete_with_operations(gce: Any) -> None:
    from google.api_core import exceptions
    from google.cloud import compute_v1

    instances, operations = _gce_clients(gce.url)
    gce.operation_polls = 2
    operation = instances.insert_unary(
        project=PROJECT, zone=ZONE, instance_resource=_gce_instance("emu-a", role="x")
    )
    assert operation.status == compute_v1.Operation.Status.RUNNING
    polled = operations.get(project=PROJECT, zone=ZONE, operation=operation.name)
    assert polled.status == compute_v1.Operation.Status.RUNNING
    done = operations.wait(project=PROJECT, zone=ZONE, operation=operation.name)
    assert done.status == compute_v1.Operation.Status.DONE and not done.error.errors

    got = instances.get(project=PROJECT, zone=ZONE, instance="emu-a")
    assert (got.name, got.status, dict(got.labels)) == ("emu-a", "RUNNING", {"role": "x"})
    assert got.machine_type.endswith("/machineTypes/e2-small")
    assert {i.key: i.value for i in got.metadata.items}["user-data"] == "#cloud-config\n"

    for name in ("emu-b", "other-c"):
        op = instances.insert_unary(
            project=PROJECT, zone=ZONE, instance_resource=_gce_instance(name, role="y")
        )
        operations.wait(project=PROJECT, zone=ZONE, operation=op.name)
    request = compute_v1.ListInstancesRequest(
        project=PROJECT, zone=ZONE, filter='(name eq "emu-.*")', max_results=1
    )
    assert sorted(i.name for i in instances.list(request=request)) == [
        "emu-a",
        "emu-b",
    ]  # two pages
    labelled = compute_v1.ListInstancesRequest(
        project=PROJECT, zone=ZONE, filter='(name eq "emu-.*") (labels.role eq "y")'
    )
    assert [i.name for i in instances.list(request=labelled)] == ["emu-b"]
    assert len(list(instances.list(project=PROJECT, zone=ZONE))) == 3

    op = instances.delete_unary(project=PROJECT, zone=ZONE, instance="emu-a")
    operations.wait(project=PROJECT, zone=ZONE, operation=op.name)
    with pytest.raises(exceptions.NotFound):
        instances.get(project=PROJECT, zone=ZONE, instance="emu-a")
    with pytest.raises(exceptions.NotFound):
        instances.delete_unary(project=PROJECT, zone=ZONE, instance="emu-a")


def test_gce_extended_operation_poller_pointed_at_the_emulator(gce: Any) -> None:
    """``insert()``'s own poller ignores client_options; given the endpoint's client it works."""
    instances, operations = _gce_clients(gce.url)
    instances.transport._extended_operations_services["zone_operations"] = operations
    gce.operation_polls = 3
    operation = instances.insert(
        project=PROJECT, zone=ZONE, instance_resource=_gce_instance("emu-ext")
    )
    operation.result(timeout=30)
    assert (
        operation.done()
        and instances.get(project=PROJECT, zone=ZONE, instance="emu-ext").status == "RUNNING"
    )


def test_gce_quota_and_auth_knobs(gce: Any) -> None:
    import google.auth.credentials
    from google.api_core import exceptions
    from google.cloud import compute_v1

    instances, operations = _gce_clients(gce.url)
    gce.quota = 0
    gce.quota_mode = "http"
    with pytest.raises(exceptions.Forbidden) as refused:
        instances.insert_unary(project=PROJECT, zone=ZONE, instance_resource=_gce_instance("emu-q"))
    assert refused.value.errors[0]["reason"] == "quotaExceeded"
    gce.quota_mode = "operation"
    op = instances.insert_unary(
        project=PROJECT, zone=ZONE, instance_resource=_gce_instance("emu-q")
    )
    done = operations.wait(project=PROJECT, zone=ZONE, operation=op.name)
    assert done.status == compute_v1.Operation.Status.DONE
    assert [e.code for e in done.error.errors] == [
        "QUOTA_EXCEEDED"
    ] and done.http_error_status_code == 403
    assert list(instances.list(project=PROJECT, zone=ZONE)) == []

    class Token(google.auth.credentials.Credentials):
        """A fixed bearer token that cannot be refreshed, like a revoked one."""

        def __init__(self, token: str) -> None:
            super().__init__()
            self.token = token

        def refresh(self, request: Any) -> None:
            raise google.auth.exceptions.RefreshError("cannot refresh")

        @property
        def expired(self) -> bool:
            return False

        @property
        def valid(self) -> bool:
            return True

    gce.quota, gce.required_token = None, "good-token"
    good, _ = _gce_clients(gce.url, Token("good-token"))
    assert list(good.list(project=PROJECT, zone=ZONE)) == []
    bad, _ = _gce_clients(gce.url, Token("stale-token"))
    with pytest.raises((exceptions.Unauthorized, google.auth.exceptions.RefreshError)):
        list(bad.list(project=PROJECT, zone=ZONE))
    assert ("GET", f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances") in gce.requests


def test_gce_rejects_what_gce_rejects(gce: Any) -> None:
    from google.api_core import exceptions

    instances, operations = _gce_clients(gce.url)
    with pytest.raises(exceptions.BadRequest, match=r"resource\.name"):
        instances.insert_unary(
            project=PROJECT, zone=ZONE, instance_resource=_gce_instance("Bad_Name")
        )
    with pytest.raises(exceptions.BadRequest, match="labels"):
        instances.insert_unary(
            project=PROJECT, zone=ZONE, instance_resource=_gce_instance("ok", Owner="Acme/App")
        )
    op = instances.insert_unary(
        project=PROJECT, zone=ZONE, instance_resource=_gce_instance("twice")
    )
    operations.wait(project=PROJECT, zone=ZONE, operation=op.name)
    with pytest.raises(exceptions.Conflict):
        instances.insert_unary(project=PROJECT, zone=ZONE, instance_resource=_gce_instance("twice"))


# --------------------------------------------------------------------------- OpenStack


def _connect(cloud: Any, password: str = "secret") -> Any:
    import openstack

    return openstack.connect(
        auth_url=cloud.auth_url,
        username="runner",
        password=password,
        project_name="runners",
        user_domain_name="Default",
        project_domain_name="Default",
        region_name="RegionOne",
        load_yaml_config=False,
        load_envvars=False,
        api_timeout=10,
    )


def test_openstack_servers_lifecycle_with_the_sdk(openstack_cloud: Any) -> None:
    import openstack.exceptions

    conn = _connect(openstack_cloud)
    flavor = conn.compute.find_flavor("m1.small", ignore_missing=False)
    image = conn.image.find_image("github-runner-debian-bookworm", ignore_missing=False)
    network = conn.network.find_network("runners", ignore_missing=False)
    assert (flavor.vcpus, flavor.ram) == (1, 2048)
    user_data = base64.b64encode(b"#cloud-config\nruncmd: [true]\n").decode()
    openstack_cloud.build_polls = 2
    server = conn.compute.create_server(
        name="emu-1",
        flavor_id=flavor.id,
        image_id=image.id,
        networks=[{"uuid": network.id}],
        user_data=user_data,
        metadata={"ghrm-prefix": "emu"},
        key_name="ops",
    )
    assert conn.compute.get_server(server.id).status == "BUILD"
    got = conn.compute.get_server(server.id)
    assert (got.name, got.status, got.metadata, got.key_name) == (
        "emu-1",
        "ACTIVE",
        {"ghrm-prefix": "emu"},
        "ops",
    )
    assert got.user_data == user_data and got.flavor.original_name == "m1.small"
    assert got.addresses["runners"][0]["version"] == 4
    conn.compute.create_server(
        name="other-2", flavor_id=flavor.id, image_id=image.id, networks="auto"
    )
    assert [s.name for s in conn.compute.servers(details=True, name="^emu-")] == ["emu-1"]
    assert len(list(conn.compute.servers(details=True))) == 2
    conn.compute.delete_server(server.id)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.compute.get_server(server.id)
    conn.compute.delete_server(server.id, ignore_missing=True)
    assert openstack_cloud.requests[0] == ("GET", "/v3")


def test_openstack_knobs(openstack_cloud: Any) -> None:
    import keystoneauth1.exceptions
    import openstack.exceptions

    with pytest.raises(keystoneauth1.exceptions.Unauthorized):
        list(_connect(openstack_cloud, password="wrong").compute.servers())
    conn = _connect(openstack_cloud)
    image = openstack_cloud.images[0]["id"]
    openstack_cloud.quota = 0
    with pytest.raises(
        openstack.exceptions.ForbiddenException, match="Quota exceeded for instances"
    ):
        conn.compute.create_server(name="emu-q", flavor_id="1", image_id=image, networks="auto")
    openstack_cloud.quota, openstack_cloud.no_valid_host = None, True
    server = conn.compute.create_server(
        name="emu-nvh", flavor_id="1", image_id=image, networks="auto"
    )
    failed = conn.compute.get_server(server.id)
    assert failed.status == "ERROR" and "No valid host" in failed.fault["message"]
    with pytest.raises(openstack.exceptions.BadRequestException):
        conn.compute.create_server(name="emu-x", flavor_id="999", image_id=image, networks="auto")
