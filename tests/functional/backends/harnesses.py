"""What the contract suite needs from each backend, done with the provider's own client.

A :class:`Harness` builds configured backends for a test prefix, creates an *orphan* (an instance with
our prefix made directly with the provider's client, as a crashed manager would leave it), injects a
capacity failure the way the provider reports one, gives a backend with bad credentials (``None``
where the backend has none), and reads back the user-data the provider stored for an instance.
"""

from __future__ import annotations

import base64
import contextlib
import io
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from github_runner_manager.backends.base import Backend, Instance
from github_runner_manager.backends.registry import create_backend

#: Settings that build each cloud backend without connecting anywhere (docker and aws need none).
MINIMAL_SETTINGS: dict[str, dict[str, Any]] = {
    "docker": {},
    "aws": {},
    "gcp": {"project": "my-project-1", "zone": "us-central1-a"},
    "openstack": {
        "auth_url": "https://keystone.example:5000/v3",
        "username": "u",
        "password": "p",
        "project_name": "runners",
    },
    "vsphere": {"host": "vcenter.example", "user": "u", "password": "p"},
}


class Harness:
    """Generic part: backends through the registry, cleaned up afterwards."""

    name = ""
    image = "ghrm-contract"

    def __init__(self) -> None:
        self._made: list[Backend] = []
        self._plain: dict[str, Backend] = {}

    def settings(self) -> dict[str, Any]:
        return {}

    def backend(self, prefix: str, **overrides: Any) -> Backend:
        """A backend with the part's settings (one per prefix, unless settings are overridden)."""
        if not overrides and prefix in self._plain:
            return self._plain[prefix]
        backend = create_backend(self.name, {**self.settings(), **overrides}, prefix=prefix)
        self._made.append(backend)
        if not overrides:
            self._plain[prefix] = backend
        return backend

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        raise NotImplementedError

    def bad_credentials(self, prefix: str) -> Backend | None:
        """A backend whose credentials the provider rejects; None: the backend has no credentials."""
        return None

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        """A backend whose next create meets the provider's capacity or quota refusal."""
        raise NotImplementedError
        yield  # pragma: no cover

    def user_data(self, instance: Instance) -> str:
        """The user-data as stored by the provider for this instance."""
        raise NotImplementedError

    def cleanup(self, prefix: str) -> None:
        with contextlib.suppress(Exception):
            self.backend(prefix).remove_all(prefix)
        for backend in self._made:
            with contextlib.suppress(Exception):
                backend.close()


# --------------------------------------------------------------------------- fake


class FakeHarness(Harness):
    """The in-memory fake; its "provider" is the shared state file."""

    name = "fake"

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.state_file = tmp / "fake-state.json"

    def settings(self) -> dict[str, Any]:
        return {"mode": "memory", "state_file": str(self.state_file)}

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        from github_runner_manager.backends.base import InstanceSpec

        other = create_backend("fake", self.settings(), prefix="someone-else")
        other.create(
            InstanceSpec(
                name=name,
                group="small",
                image=self.image,
                cpu=1,
                memory=1 << 30,
                disk=1 << 30,
                user_data="",
                jit_config="",
                tags=dict(tags),
            )
        )

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        yield self.backend(prefix, capacity=0)


# --------------------------------------------------------------------------- lxd


class LXDHarness(Harness):
    name = "lxd"

    def __init__(self, part: Any) -> None:
        super().__init__()
        self.image = part.image
        self.part = part

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        import pylxd

        client = pylxd.Client(timeout=60)
        instance = client.instances.create(
            {
                "name": name,
                "type": "container",
                "source": {"type": "image", "alias": self.image},
                "config": {f"user.{k}": v for k, v in tags.items()},
            },
            wait=True,
        )
        instance.start(wait=True)

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        # A project whose limits.instances=0: LXD refuses with "Reached maximum number of instances".
        yield self.backend(prefix, project=self.part.full_project)

    def user_data(self, instance: Instance) -> str:
        import pylxd

        return str(pylxd.Client(timeout=30).instances.get(instance.name).config["user.user-data"])


# --------------------------------------------------------------------------- docker


class DockerHarness(Harness):
    name = "docker"

    def __init__(self, part: Any) -> None:
        super().__init__()
        self.part = part
        self.image = part.image

    def settings(self) -> dict[str, Any]:
        return {"base_url": self.part.base_url}

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.part.base_url, timeout=60, version="auto")

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        client = self.client()
        try:
            client.containers.run(
                self.image, ["sleep", "600"], name=name, labels=dict(tags), detach=True
            )
        finally:
            client.close()

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        # The test asks for more CPUs than the host has: dockerd refuses ("only N CPUs available").
        yield self.backend(prefix)

    def user_data(self, instance: Instance) -> str:
        client = self.client()
        try:
            stream, _ = client.containers.get(instance.name).get_archive("/var/lib/ghrm/user-data")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.extractfile("user-data")
                assert member is not None
                return member.read().decode()
        finally:
            client.close()


# --------------------------------------------------------------------------- aws


class AWSHarness(Harness):
    name = "aws"
    image = "ami-1e749f67"  # one of moto's built-in Ubuntu AMIs

    def __init__(self, moto: Any) -> None:
        super().__init__()
        self.moto = moto

    def settings(self) -> dict[str, Any]:
        return {
            "region": "us-east-1",
            "endpoint_url": self.moto.url,
            "access_key_id": "testing",
            "secret_access_key": "testing",
        }

    def ec2(self) -> Any:
        import boto3

        return boto3.client(
            "ec2",
            region_name="us-east-1",
            endpoint_url=self.moto.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        self.ec2().run_instances(
            ImageId=self.image,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": "Name", "Value": name}]
                    + [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )

    def bad_credentials(self, prefix: str) -> Backend | None:
        return self.backend(
            prefix,
            access_key_id="AKIAIOSFODNN7EXAMPLE",
            secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        )

    @contextlib.contextmanager
    def enforced_auth(self) -> Iterator[None]:
        """moto checks signatures against its IAM users only while this is on."""
        self.moto.post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self.moto.post("/moto-api/reset-auth", b"inf")

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        # moto has no capacity limits: answer RunInstances as EC2 does when a zone is full, through
        # botocore's own error path (a before-call hook returning an HTTP 500 error response).
        from botocore.awsrequest import AWSResponse

        backend = self.backend(prefix)
        client = backend.ec2  # type: ignore[attr-defined]

        def insufficient(**_: Any) -> tuple[Any, dict[str, Any]]:
            response = AWSResponse(self.moto.url, 500, {}, None)
            return response, {
                "Error": {
                    "Code": "InsufficientInstanceCapacity",
                    "Message": "We currently do not have sufficient t3.medium capacity in the Availability Zone you requested (us-east-1a).",
                },
                "ResponseMetadata": {"HTTPStatusCode": 500},
            }

        client.meta.events.register("before-call.ec2.RunInstances", insufficient)
        try:
            yield backend
        finally:
            client.meta.events.unregister("before-call.ec2.RunInstances", insufficient)

    def user_data(self, instance: Instance) -> str:
        reply = self.ec2().describe_instance_attribute(
            InstanceId=instance.extra["instance_id"], Attribute="userData"
        )
        return base64.b64decode(reply["UserData"]["Value"]).decode()


# --------------------------------------------------------------------------- gcp


class GCPHarness(Harness):
    name = "gcp"
    image = "projects/debian-cloud/global/images/family/debian-12"
    project = "ghrm-contract"
    zone = "us-central1-a"

    def __init__(self, gce: Any) -> None:
        super().__init__()
        self.gce = gce

    def settings(self) -> dict[str, Any]:
        return {"project": self.project, "zone": self.zone, "endpoint": self.gce.url}

    def clients(self) -> tuple[Any, Any]:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import compute_v1

        options = ClientOptions(api_endpoint=self.gce.url)
        return (
            compute_v1.InstancesClient(credentials=AnonymousCredentials(), client_options=options),
            compute_v1.ZoneOperationsClient(
                credentials=AnonymousCredentials(), client_options=options
            ),
        )

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        from google.cloud import compute_v1

        instances, operations = self.clients()
        operation = instances.insert_unary(
            project=self.project,
            zone=self.zone,
            instance_resource=compute_v1.Instance(
                name=name,
                machine_type=f"zones/{self.zone}/machineTypes/e2-medium",
                labels=dict(tags),
                disks=[
                    compute_v1.AttachedDisk(
                        boot=True,
                        initialize_params=compute_v1.AttachedDiskInitializeParams(
                            source_image=self.image
                        ),
                    )
                ],
                network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
            ),
        )
        operations.wait(project=self.project, zone=self.zone, operation=operation.name)

    def bad_credentials(self, prefix: str) -> Backend | None:
        self.gce.unauthorized = True  # the credentials were revoked: every call answers 401
        return self.backend(prefix)

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        self.gce.quota, self.gce.quota_mode = 0, "operation"
        try:
            yield self.backend(prefix)
        finally:
            self.gce.quota = None

    def user_data(self, instance: Instance) -> str:
        instances, _ = self.clients()
        raw = instances.get(project=self.project, zone=self.zone, instance=instance.name)
        return next(item.value for item in raw.metadata.items if item.key == "user-data")


# --------------------------------------------------------------------------- openstack


class OpenStackHarness(Harness):
    name = "openstack"
    image = "github-runner-debian-bookworm"

    def __init__(self, cloud: Any) -> None:
        super().__init__()
        self.cloud = cloud

    def settings(self) -> dict[str, Any]:
        return {
            "auth_url": self.cloud.auth_url,
            "username": "runner",
            "password": "secret",
            "project_name": "runners",
            "region_name": "RegionOne",
            "network": "runners",
        }

    def conn(self) -> Any:
        import openstack

        return openstack.connect(
            auth_url=self.cloud.auth_url,
            username="runner",
            password="secret",
            project_name="runners",
            user_domain_name="Default",
            project_domain_name="Default",
            region_name="RegionOne",
            load_yaml_config=False,
            load_envvars=False,
        )

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        conn = self.conn()
        conn.compute.create_server(
            name=name,
            flavor_id="2",
            image_id=self.cloud.images[0]["id"],
            networks="auto",
            metadata=dict(tags),
        )

    def bad_credentials(self, prefix: str) -> Backend | None:
        return self.backend(prefix, password="not-the-password")

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        self.cloud.quota = 0
        try:
            yield self.backend(prefix)
        finally:
            self.cloud.quota = None

    def user_data(self, instance: Instance) -> str:
        server = self.conn().compute.get_server(instance.extra["id"])
        return base64.b64decode(server.user_data).decode()


# --------------------------------------------------------------------------- vsphere


class VSphereHarness(Harness):
    name = "vsphere"
    image = "DC0_H0_VM0"  # a VM of vcsim's VPX model, cloned as the template

    def __init__(self, vcsim: Any) -> None:
        super().__init__()
        self.vcsim = vcsim

    def settings(self) -> dict[str, Any]:
        return {
            "host": self.vcsim.host,
            "port": self.vcsim.port,
            "user": self.vcsim.user,
            "password": self.vcsim.password,
            "insecure": True,
        }

    def _si(self) -> Any:
        from pyVim.connect import SmartConnect

        return SmartConnect(
            host=self.vcsim.host,
            port=self.vcsim.port,
            user=self.vcsim.user,
            pwd=self.vcsim.password,
            disableSslCertValidation=True,
        )

    def _vm(self, content: Any, name: str) -> Any:
        from pyVmomi import vim

        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            return next(vm for vm in view.view if vm.name == name)
        finally:
            view.Destroy()

    def make_orphan(self, name: str, tags: Mapping[str, str]) -> None:
        from pyVim.connect import Disconnect
        from pyVim.task import WaitForTask
        from pyVmomi import vim

        si = self._si()
        try:
            content = si.RetrieveContent()
            template = self._vm(content, self.image)
            spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(), powerOn=False, template=False)
            WaitForTask(template.CloneVM_Task(folder=template.parent, name=name, spec=spec))
            vm = self._vm(content, name)
            manager = content.customFieldsManager
            keys = {f.name: f.key for f in manager.field or []}
            for key, value in tags.items():
                if key not in keys:
                    keys[key] = manager.AddCustomFieldDef(name=key, moType=vim.VirtualMachine).key
                manager.SetField(entity=vm, key=keys[key], value=value)
        finally:
            Disconnect(si)

    def bad_credentials(self, prefix: str) -> Backend | None:
        return self.backend(prefix, password="not-the-password")

    @contextlib.contextmanager
    def out_of_capacity(self, prefix: str) -> Iterator[Backend]:
        self.vcsim.fault("CloneVM_Task", "InsufficientResourcesFault")
        try:
            yield self.backend(prefix)
        finally:
            self.vcsim.fault("CloneVM_Task", None)

    def user_data(self, instance: Instance) -> str:
        from pyVim.connect import Disconnect

        si = self._si()
        try:
            vm = self._vm(si.RetrieveContent(), instance.name)
            extra = {o.key: o.value for o in vm.config.extraConfig}
            assert extra["guestinfo.userdata.encoding"] == "base64"
            return base64.b64decode(extra["guestinfo.userdata"]).decode()
        finally:
            Disconnect(si)


#: backend name -> (fixtures the harness needs, how to build it)
HARNESSES: dict[str, tuple[tuple[str, ...], Callable[..., Harness]]] = {
    "fake": (("tmp_path",), FakeHarness),
    "lxd": (("lxd_part",), LXDHarness),
    "docker": (("dockerd",), DockerHarness),
    "aws": (("moto",), AWSHarness),
    "gcp": (("gce",), GCPHarness),
    "openstack": (("openstack_cloud",), OpenStackHarness),
    "vsphere": (("vcsim",), VSphereHarness),
}
#: Backends that take credentials the provider can reject.
WITH_CREDENTIALS = ["aws", "gcp", "openstack", "vsphere"]
#: Backends whose provider keeps the user-data where a test can read it back.
WITH_USER_DATA = ["lxd", "docker", "aws", "gcp", "openstack", "vsphere"]
