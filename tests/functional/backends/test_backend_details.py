"""What each backend does beyond the shared contract, checked on its real part.

docker: resource limits, never privileged, the host gateway, the user-data bootstrap. aws: the flavor
table, root volume, tags on volumes, AMI by name, shutdown terminates, permission errors. gcp: machine
types, labels under GCE's rules, metadata, quota refused at once. openstack: the cloud's own flavors,
names resolved, "no valid host" as capacity. vsphere: size, guestinfo, a session that expired.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from github_runner_manager.backends.base import (
    TAG_GROUP,
    TAG_OWNER,
    TAG_PREFIX,
    TAG_UNIT,
    AuthError,
    Backend,
    BackendError,
    CapacityError,
    InstanceSpec,
    InstanceState,
)
from github_runner_manager.backends.registry import create_backend
from github_runner_manager.units import GIB, MIB
from tests.functional.backends.harnesses import (
    AWSHarness,
    DockerHarness,
    GCPHarness,
    OpenStackHarness,
    VSphereHarness,
)
from tests.parts import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@pytest.fixture
def prefix() -> str:
    return "dt" + secrets.token_hex(3)


def make_spec(
    prefix: str,
    image: str,
    *,
    cpu: int = 2,
    memory: int = 4 * GIB,
    disk: int = 20 * GIB,
    user_data: str = "#!/bin/sh\nexec sleep 600\n",
    owner: str = "acme/app",
    **extra: Any,
) -> InstanceSpec:
    return InstanceSpec(
        name=f"{prefix}-small-{secrets.token_hex(3)}",
        group="small",
        image=image,
        cpu=cpu,
        memory=memory,
        disk=disk,
        user_data=user_data,
        jit_config="JIT-" + secrets.token_hex(8),
        tags={TAG_PREFIX: prefix, TAG_UNIT: "u0", TAG_GROUP: "small", TAG_OWNER: owner},
        extra=extra,
    )


@contextlib.contextmanager
def cleaned(backend: Backend) -> Iterator[Backend]:
    try:
        yield backend
    finally:
        with contextlib.suppress(Exception):
            backend.remove_all()
        backend.close()


# --------------------------------------------------------------------------- docker


def test_docker_container_is_limited_unprivileged_and_sees_the_host(
    dockerd: Any, prefix: str
) -> None:
    harness = DockerHarness(dockerd)
    with cleaned(harness.backend(prefix)) as backend:
        spec = make_spec(
            prefix,
            dockerd.image,
            cpu=1,
            memory=256 * MIB,
            user_data='#!/bin/sh\necho "$RUNNER_NAME $RUNNER_JITCONFIG" > /tmp/ran\nexec sleep 600\n',
        )
        instance = backend.create(spec)
        assert instance.state is InstanceState.RUNNING and instance.address
        client = harness.client()
        try:
            container = client.containers.get(spec.name)
            host = container.attrs["HostConfig"]
            assert host["NanoCpus"] == 1_000_000_000 and host["Memory"] == 256 * MIB
            assert host["Privileged"] is False and host["Init"] is True
            assert "host.docker.internal:host-gateway" in host["ExtraHosts"]
            assert container.labels == dict(spec.tags)
            assert not any(spec.jit_config in v for v in container.labels.values())
            ran = wait_for(
                lambda: container.exec_run(["cat", "/tmp/ran"]).output.decode().strip(),
                20,
                what="user-data script ran",
            )
            assert ran == f"{spec.name} {spec.jit_config}"
            mode = (
                container.exec_run(["stat", "-c", "%a", "/var/lib/ghrm/user-data"])
                .output.decode()
                .strip()
            )
            assert mode in {"600", "700"}
            hosts = container.exec_run(["cat", "/etc/hosts"]).output.decode()
            assert "host.docker.internal" in hosts
        finally:
            client.close()


def test_docker_user_data_that_is_not_a_script_stops_the_container(
    dockerd: Any, prefix: str
) -> None:
    with cleaned(DockerHarness(dockerd).backend(prefix)) as backend:
        spec = make_spec(
            prefix, dockerd.image, cpu=1, memory=128 * MIB, user_data="#cloud-config\n{}\n"
        )
        backend.create(spec)
        stopped = wait_for(
            lambda: backend.get(spec.name).state is InstanceState.STOPPED, 30, what="exit"
        )
        assert stopped
        assert [i.state for i in backend.list()] == [InstanceState.STOPPED]


def test_docker_max_instances_and_missing_image(dockerd: Any, prefix: str) -> None:
    harness = DockerHarness(dockerd)
    with cleaned(harness.backend(prefix, max_instances=1)) as backend:
        backend.create(make_spec(prefix, dockerd.image, cpu=1, memory=128 * MIB))
        with pytest.raises(CapacityError, match="max_instances=1"):
            backend.create(make_spec(prefix, dockerd.image, cpu=1, memory=128 * MIB))
        with pytest.raises(BackendError, match="docker import"):
            harness.backend(prefix).create(
                make_spec(prefix, "ghrm-no-such-image:1", cpu=1, memory=128 * MIB)
            )
    group = type("Group", (), {"name": "small", "image": "ghrm-no-such-image:1"})()
    with pytest.raises(BackendError, match="docker import"):
        harness.backend(prefix).validate(group)
    group.image = dockerd.image
    harness.backend(prefix).validate(group)
    unreachable = create_backend("docker", {"base_url": "unix:///nonexistent/docker.sock"})
    with pytest.raises(BackendError, match="unreachable"):
        unreachable.list()


# --------------------------------------------------------------------------- aws


def test_aws_instance_type_volume_and_shutdown(moto: Any, prefix: str) -> None:
    harness = AWSHarness(moto)
    with cleaned(harness.backend(prefix)) as backend:
        ec2 = harness.ec2()
        medium = backend.create(
            make_spec(prefix, harness.image, cpu=2, memory=4 * GIB, disk=30 * GIB)
        )
        assert medium.extra["instance_type"] == "t3.medium"
        attribute = ec2.describe_instance_attribute(
            InstanceId=medium.extra["instance_id"], Attribute="instanceInitiatedShutdownBehavior"
        )
        assert attribute["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        volumes = ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [medium.extra["instance_id"]]}]
        )["Volumes"]
        assert [v["Size"] for v in volumes] == [30]
        assert {t["Key"]: t["Value"] for t in volumes[0]["Tags"]}[TAG_PREFIX] == prefix
        override = backend.create(make_spec(prefix, harness.image, instance_type="c5.large"))
        assert override.extra["instance_type"] == "c5.large"
    fixed = harness.backend(prefix, instance_type="m5.xlarge")
    with cleaned(fixed):
        assert fixed.create(make_spec(prefix, harness.image)).extra["instance_type"] == "m5.xlarge"


def test_aws_ami_by_name_and_missing_ami(moto: Any, prefix: str) -> None:
    harness = AWSHarness(moto)
    ec2 = harness.ec2()
    seed = ec2.run_instances(ImageId=harness.image, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    name = f"github-runner-{prefix}"
    image_id = ec2.create_image(InstanceId=seed, Name=name)["ImageId"]
    ec2.terminate_instances(InstanceIds=[seed])
    with cleaned(harness.backend(prefix)) as backend:
        assert backend.create(make_spec(prefix, name)).extra["image_id"] == image_id
        with pytest.raises(BackendError, match="no AMI 'no-such-image'"):
            backend.create(make_spec(prefix, "no-such-image"))


def test_aws_user_without_permission_is_an_auth_error(moto: Any, prefix: str) -> None:
    """moto's IAM: a real user and key, but no policy allowing EC2 -- UnauthorizedOperation/AccessDenied."""
    harness = AWSHarness(moto)
    import boto3

    iam = boto3.client(
        "iam",
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    iam.create_user(UserName=prefix)
    key = iam.create_access_key(UserName=prefix)["AccessKey"]
    backend = harness.backend(
        prefix, access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"]
    )
    with harness.enforced_auth(), pytest.raises(AuthError):
        backend.list()


def test_aws_oversized_user_data_is_refused(moto: Any, prefix: str) -> None:
    with (
        cleaned(AWSHarness(moto).backend(prefix)) as backend,
        pytest.raises(BackendError, match="16384"),
    ):
        backend.create(make_spec(prefix, AWSHarness.image, user_data="#" * 20000))


# --------------------------------------------------------------------------- gcp


def test_gcp_machine_type_labels_metadata(gce: Any, prefix: str) -> None:
    harness = GCPHarness(gce)
    with cleaned(harness.backend(prefix)) as backend:
        spec = make_spec(
            prefix, "runner-image", cpu=2, memory=4 * GIB, disk=25 * GIB, owner="Acme/App"
        )
        instance = backend.create(spec)
        assert instance.tags[TAG_OWNER] == "Acme/App"  # exact, from the metadata
        assert instance.extra["labels"][TAG_OWNER] == "acme_app"  # as GCE allows
        raw = gce.instances[(GCPHarness.project, GCPHarness.zone, spec.name)]
        assert raw["machineType"].endswith("/machineTypes/e2-medium")
        disk = raw["disks"][0]["initializeParams"]
        assert disk["sourceImage"] == f"projects/{GCPHarness.project}/global/images/runner-image"
        assert int(disk["diskSizeGb"]) == 25
        items = {i["key"]: i["value"] for i in raw["metadata"]["items"]}
        assert items["user-data"] == spec.user_data
        assert (
            spec.jit_config not in items["startup-script"]
            and "cloud-init" in items["startup-script"]
        )
        assert backend.list(tags={TAG_OWNER: "Acme/App"})[0].name == spec.name
        assert backend.list(tags={TAG_OWNER: "acme_app"}) == []  # labels match, exact tags do not


def test_gcp_quota_refused_at_once_is_capacity(gce: Any, prefix: str) -> None:
    gce.quota, gce.quota_mode = 0, "http"
    with (
        cleaned(GCPHarness(gce).backend(prefix)) as backend,
        pytest.raises(CapacityError, match="Quota"),
    ):
        backend.create(make_spec(prefix, "runner-image"))


def test_gcp_invalid_name_is_refused_before_any_call(gce: Any) -> None:
    backend = GCPHarness(gce).backend("Bad")
    with pytest.raises(BackendError, match="not a valid instance name"):
        backend.create(make_spec("Bad_Prefix", "runner-image"))
    assert gce.requests == []


# --------------------------------------------------------------------------- openstack


def test_openstack_flavor_from_the_cloud_and_no_valid_host(
    openstack_cloud: Any, prefix: str
) -> None:
    harness = OpenStackHarness(openstack_cloud)
    with cleaned(harness.backend(prefix, build_timeout=10)) as backend:
        small = backend.create(
            make_spec(prefix, harness.image, cpu=1, memory=1 * GIB, disk=10 * GIB)
        )
        assert small.extra["flavor"] == "m1.small" and small.state is InstanceState.RUNNING
        large = backend.create(
            make_spec(prefix, harness.image, cpu=3, memory=4 * GIB, disk=10 * GIB)
        )
        assert large.extra["flavor"] == "m1.large"
        named = backend.create(make_spec(prefix, harness.image, flavor="m1.tiny"))
        assert named.extra["flavor"] == "m1.tiny"
        openstack_cloud.no_valid_host, openstack_cloud.build_polls = True, 2
        with pytest.raises(CapacityError, match="No valid host"):
            backend.create(make_spec(prefix, harness.image, cpu=1, memory=1 * GIB))
        assert len(backend.list()) == 3  # the failed server was removed
        with pytest.raises(BackendError, match="no image named 'missing-image'"):
            backend.create(make_spec(prefix, "missing-image"))


def test_openstack_clouds_yaml(openstack_cloud: Any, prefix: str, tmp_path: Any) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  emulator:\n    auth:\n"
        f"      auth_url: {openstack_cloud.auth_url}\n      username: runner\n      password: secret\n"
        "      project_name: runners\n      user_domain_name: Default\n      project_domain_name: Default\n"
        "    region_name: RegionOne\n    identity_api_version: 3\n"
    )
    backend = create_backend(
        "openstack",
        {"clouds_yaml": str(clouds), "cloud": "emulator", "network": "runners"},
        prefix=prefix,
    )
    with cleaned(backend):
        instance = backend.create(make_spec(prefix, OpenStackHarness.image, cpu=1, memory=GIB))
        assert backend.get(instance.name).tags[TAG_PREFIX] == prefix


# --------------------------------------------------------------------------- vsphere


def test_vsphere_clone_size_guestinfo_and_power(vcsim: Any, prefix: str) -> None:
    from pyVim.connect import Disconnect

    harness = VSphereHarness(vcsim)
    with cleaned(harness.backend(prefix, template=VSphereHarness.image)) as backend:
        spec = make_spec(prefix, "ignored-when-template-set", cpu=2, memory=2 * GIB)
        instance = backend.create(spec)
        assert instance.state is InstanceState.RUNNING
        si = harness._si()
        try:
            vm = harness._vm(si.RetrieveContent(), spec.name)
            assert (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) == (2, 2048)
            extra = {o.key: o.value for o in vm.config.extraConfig}
            assert extra["guestinfo.metadata.encoding"] == "base64"
            assert spec.name in base64.b64decode(extra["guestinfo.metadata"]).decode()
        finally:
            Disconnect(si)
        with pytest.raises(BackendError, match="no template VM 'no-such-template'"):
            harness.backend(prefix).create(make_spec(prefix, "no-such-template"))
        group = type("Group", (), {"name": "small", "image": "no-such-template"})()
        with pytest.raises(BackendError, match="no template VM"):
            harness.backend(prefix).validate(group)
        group.image = VSphereHarness.image
        harness.backend(prefix).validate(group)
        with pytest.raises(BackendError, match="no datastore 'nope'"):
            harness.backend(prefix, datastore="nope").validate(group)


def test_vsphere_logs_in_again_after_the_session_expired(vcsim: Any, prefix: str) -> None:
    from pyVim.connect import Disconnect

    harness = VSphereHarness(vcsim)
    with cleaned(harness.backend(prefix)) as backend:
        created = backend.create(make_spec(prefix, VSphereHarness.image, cpu=1, memory=GIB))
        session = backend._connect().content.sessionManager.currentSession.key  # type: ignore[attr-defined]
        admin = harness._si()
        try:
            admin.content.sessionManager.TerminateSession(sessionId=[session])
        finally:
            Disconnect(admin)
        assert [i.name for i in backend.list()] == [created.name]
