"""Settings, registry and dependency behaviour of the docker, aws, gcp, openstack and vsphere backends.

No part is needed: a backend validates its settings when built and imports its client library only when
chosen; a missing library names the pip extra that brings it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from github_runner_manager.backends.base import BackendConfigError
from github_runner_manager.backends.registry import backend_class, create_backend
from github_runner_manager.units import GIB
from tests.functional.backends.harnesses import MINIMAL_SETTINGS

ROOT = Path(__file__).resolve().parents[3]
MINIMAL = MINIMAL_SETTINGS
MINE = list(MINIMAL)


@pytest.mark.parametrize("name", MINE)
def test_minimal_settings_build_without_network(name: str) -> None:
    backend = create_backend(name, MINIMAL[name], prefix="ghr")
    assert backend.name == name and backend.prefix == "ghr"
    backend.close()


@pytest.mark.parametrize("name", MINE)
def test_unknown_key_is_named(name: str) -> None:
    with pytest.raises(
        BackendConfigError, match=rf"backends\.{name}\.flavour: Extra inputs are not permitted"
    ):
        create_backend(name, {**MINIMAL[name], "flavour": "large"})


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        (
            "docker",
            {"base_url": "docker.sock"},
            r"backends\.docker\.base_url: .*unix:///var/run/docker\.sock",
        ),
        ("docker", {"command": []}, r"backends\.docker\.command: .*exec form"),
        (
            "docker",
            {"user_data_path": "relative/file"},
            r"backends\.docker\.user_data_path: .*absolute",
        ),
        (
            "docker",
            {"tls_client_cert": "/c.pem"},
            r"tls_client_cert and tls_client_key must be given together",
        ),
        (
            "docker",
            {"max_instances": -1},
            r"backends\.docker\.max_instances: .*greater than or equal to 0",
        ),
        ("aws", {"region": "mars"}, r"backends\.aws\.region: .*us-east-1"),
        ("aws", {"ami": "debian"}, r"backends\.aws\.ami: .*ami-"),
        ("aws", {"subnet_id": "net-1"}, r"backends\.aws\.subnet_id: .*subnet-"),
        ("aws", {"security_group_ids": ["default"]}, r"backends\.aws\.security_group_ids: .*sg-"),
        (
            "aws",
            {"access_key_id": "AKIA"},
            r"access_key_id and secret_access_key must be given together",
        ),
        (
            "aws",
            {"profile": "p", "access_key_id": "a", "secret_access_key": "s"},
            r"either profile or",
        ),
        (
            "aws",
            {"instance_types": [{"name": "x", "cpu": 2, "memory": "lots"}]},
            r"backends\.aws\.instance_types\.0\.memory: .*not a size",
        ),
        ("aws", {"instance_types": []}, r"backends\.aws\.instance_types: .*at least one"),
        ("gcp", {"zone": "us-central1-a"}, r"backends\.gcp\.project: Field required"),
        (
            "gcp",
            {"project": "my-project-1", "zone": "central"},
            r"backends\.gcp\.zone: .*us-central1-a",
        ),
        ("gcp", {"project": "My_Project", "zone": "us-central1-a"}, r"backends\.gcp\.project: "),
        (
            "gcp",
            {"project": "my-project-1", "zone": "us-central1-a", "endpoint": "localhost:8080"},
            r"backends\.gcp\.endpoint: ",
        ),
        (
            "gcp",
            {
                "project": "my-project-1",
                "zone": "us-central1-a",
                "credentials_file": "/nonexistent.json",
            },
            r"backends\.gcp\.credentials_file: .*not a readable file",
        ),
        ("openstack", {}, r"set clouds_yaml \+ cloud, or auth_url"),
        (
            "openstack",
            {"clouds_yaml": "/nonexistent.yaml", "cloud": "c"},
            r"backends\.openstack\.clouds_yaml: ",
        ),
        (
            "openstack",
            {**MINIMAL["openstack"], "cloud": "c"},
            r"either clouds_yaml/cloud or auth_url",
        ),
        (
            "openstack",
            {**MINIMAL["openstack"], "auth_url": "keystone:5000"},
            r"backends\.openstack\.auth_url: ",
        ),
        (
            "openstack",
            {**MINIMAL["openstack"], "interface": "private"},
            r"backends\.openstack\.interface: ",
        ),
        ("vsphere", {"host": "vc", "user": "u"}, r"backends\.vsphere\.password: Field required"),
        (
            "vsphere",
            {"host": "https://vc/sdk", "user": "u", "password": "p"},
            r"backends\.vsphere\.host: .*without scheme",
        ),
        (
            "vsphere",
            {"host": "vc", "user": "u", "password": "p", "port": 0},
            r"backends\.vsphere\.port: ",
        ),
    ],
)
def test_wrong_settings_are_named_precisely(
    name: str, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(BackendConfigError, match=message):
        create_backend(name, settings)


@pytest.mark.parametrize(
    ("name", "settings", "secret"),
    [
        (
            "aws",
            {"access_key_id": "AKIA", "secret_access_key": "s3cr3t-aws", "region": "bad"},
            "s3cr3t-aws",
        ),
        (
            "openstack",
            {**MINIMAL["openstack"], "password": "s3cr3t-os", "interface": "x"},
            "s3cr3t-os",
        ),
        ("vsphere", {"host": "vc", "user": "u", "password": "s3cr3t-vc", "port": -1}, "s3cr3t-vc"),
    ],
)
def test_secrets_never_show_in_errors_or_repr(
    name: str, settings: dict[str, object], secret: str
) -> None:
    with pytest.raises(BackendConfigError) as caught:
        create_backend(name, settings)
    assert secret not in str(caught.value)
    good = dict(settings)
    good.pop("region", None), good.pop("interface", None), good.pop("port", None)
    backend = create_backend(name, good)
    assert secret not in repr(backend.settings) and secret not in str(backend.settings)


def test_flavor_tables_pick_the_smallest_fit() -> None:
    from github_runner_manager.backends import aws, gcp

    table = aws.AWSSettings().instance_types
    assert aws.pick_instance_type(table, 2, 4 * GIB) == "t3.medium"
    assert aws.pick_instance_type(table, 3, 1 * GIB) == "t3.xlarge"
    assert aws.pick_instance_type(table, 8, 32 * GIB) == "t3.2xlarge"
    with pytest.raises(
        BackendConfigError, match=r"backends\.aws\.instance_types: no instance type has 512 CPUs"
    ):
        aws.pick_instance_type(table, 512, GIB)
    custom = aws.AWSSettings.model_validate(
        {
            "instance_types": [
                {"name": "big", "cpu": 16, "memory": "64GiB"},
                {"name": "small", "cpu": 2, "memory": "2GiB"},
            ]
        }
    ).instance_types
    assert [t.name for t in custom] == ["small", "big"]
    backend = gcp.GCPBackend(MINIMAL["gcp"])
    assert backend._pick(2, 4 * GIB) == "e2-medium"
    assert backend._pick(4, 4 * GIB) == "e2-standard-4"


def test_gce_labels_follow_gce_rules() -> None:
    from github_runner_manager.backends.gcp import label_key, label_value

    assert label_key("ghrm-owner") == "ghrm-owner"
    assert label_key("Team Name") == "team_name"
    assert label_key("1st") == "k1st"
    assert label_value("Acme/App") == "acme_app"
    long = label_value("x" * 80)
    assert len(long) == 63 and long != label_value("x" * 81)


LAZY = textwrap.dedent(
    """
    import sys
    from github_runner_manager.backends import registry
    heavy = ["docker", "boto3", "google.cloud.compute_v1", "openstack", "pyVmomi", "pylxd"]
    assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
    registry.backend_class("aws")
    assert "boto3" in sys.modules
    assert not [m for m in heavy if m != "boto3" and m in sys.modules]
    print("lazy")
    """
)

MISSING = textwrap.dedent(
    """
    import sys
    sys.modules[sys.argv[1]] = None  # as if the library were not installed
    from github_runner_manager.backends.base import MissingDependencyError
    from github_runner_manager.backends.registry import backend_class
    try:
        backend_class(sys.argv[2])
    except MissingDependencyError as exc:
        print(exc)
    """
)


def _python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_backends_are_imported_lazily() -> None:
    assert _python(LAZY).strip() == "lazy"


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("docker", "docker", "docker"),
        ("aws", "boto3", "aws"),
        ("gcp", "google.cloud.compute_v1", "gcp"),
        ("openstack", "openstack", "openstack"),
        ("vsphere", "pyVmomi", "vsphere"),
    ],
)
def test_missing_library_names_the_extra(name: str, module: str, extra: str) -> None:
    message = _python(MISSING, module, name)
    assert f"github-runner-manager[{extra}]" in message, message
    assert f"backend {name!r}" in message


def test_registry_maps_every_backend_of_this_suite() -> None:
    for name in MINE:
        assert backend_class(name).name == name
