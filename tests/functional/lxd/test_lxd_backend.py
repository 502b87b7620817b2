"""The LXD backend against a real LXD: lifecycle, tags, limits, orphans and error classes."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from github_runner_manager.backends.base import (
    TAG_GROUP,
    TAG_OWNER,
    TAG_PREFIX,
    TAG_UNIT,
    AuthError,
    BackendConfigError,
    BackendError,
    CapacityError,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
)
from github_runner_manager.backends.lxd import LXDBackend, LXDSettings
from github_runner_manager.backends.registry import create_backend
from tests.functional.lxd.lxdtools import RunnerImage, lxc
from tests.parts import free_port, wait_for

MIB = 1024**2
GIB = 1024**3


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:7]}"


def _spec(prefix: str, image: str, **overrides: object) -> InstanceSpec:
    values: dict[str, object] = {
        "name": f"{prefix}-small-{uuid.uuid4().hex[:6]}",
        "group": "small",
        "image": image,
        "cpu": 1,
        "memory": 512 * MIB,
        "disk": 3 * GIB,
        "user_data": "#cloud-config\n# test\n",
        "jit_config": "ZW5jb2RlZC1qaXQ=",
        "tags": {
            TAG_PREFIX: prefix,
            TAG_UNIT: "unit-0",
            TAG_GROUP: "small",
            TAG_OWNER: "acme",
            "flavor": "x",
        },
    }
    values.update(overrides)
    return InstanceSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def backend() -> Iterator[LXDBackend]:
    prefix = _prefix()
    instance = LXDBackend({}, prefix=prefix)
    yield instance
    try:
        instance.remove_all()
    finally:
        instance.close()


# --------------------------------------------------------------------------- settings (no LXD needed)


def test_settings_are_validated() -> None:
    with pytest.raises(BackendConfigError, match=r"backends\.lxd\.bogus"):
        LXDBackend.parse_settings({"bogus": 1})
    with pytest.raises(BackendConfigError, match="needs cert and key"):
        LXDBackend.parse_settings({"url": "https://10.151.12.1:8443"})
    with pytest.raises(BackendConfigError, match="cert and key go together"):
        LXDBackend.parse_settings({"cert": "/tmp/c.crt"})
    with pytest.raises(BackendConfigError, match=r"backends\.lxd\.url"):
        LXDBackend.parse_settings({"url": "ftp://x"})
    settings = LXDBackend.parse_settings({})
    assert isinstance(settings, LXDSettings)
    assert settings.network == "lxdbr0" and settings.url is None and settings.profile == "default"


def test_instance_request_is_unprivileged_with_limits_and_tags() -> None:
    backend = LXDBackend({"storage_pool": "default"}, prefix="ghr")
    request = backend.instance_config(
        _spec("ghr", "github-runner-debian-bookworm", memory=4 * GIB + 1)
    )
    config = request["config"]
    assert config["limits.cpu"] == "1"
    assert config["limits.memory"] == f"{4 * GIB + 1}B"
    assert config["security.nesting"] == "true"
    assert "security.privileged" not in config
    assert config["user.jitconfig"] == "ZW5jb2RlZC1qaXQ="
    assert config["user.ghrm-prefix"] == "ghr" and config["user.ghrm-tag.flavor"] == "x"
    assert request["devices"]["root"] == {
        "type": "disk",
        "path": "/",
        "pool": "default",
        "size": "3072MiB",
    }
    assert request["devices"]["eth0"]["network"] == "lxdbr0"
    assert request["source"] == {"type": "image", "alias": "github-runner-debian-bookworm"}
    with pytest.raises(BackendConfigError, match="not allowed"):
        backend.instance_config(
            _spec("ghr", "img", extra={"lxd_config": {"security.privileged": "true"}})
        )


# --------------------------------------------------------------------------- real LXD


@pytest.mark.needs_lxd
def test_lifecycle(backend: LXDBackend, runner_image: RunnerImage) -> None:
    spec = _spec(backend.prefix, runner_image.alias)
    created = backend.create(spec)
    assert created.name == spec.name
    assert created.state is InstanceState.RUNNING
    assert created.backend == "lxd"
    assert created.tags == dict(spec.tags)

    got = wait_for(
        lambda: backend.get(spec.name).address and backend.get(spec.name), timeout=60, what="IPv4"
    )
    assert got.address is not None and got.address.startswith("10.151.12.")
    assert got.created_at is not None and got.extra["image"]

    listed = backend.list()
    assert [i.name for i in listed] == [spec.name]
    assert backend.list(tags={TAG_GROUP: "small", TAG_UNIT: "unit-0"})[0].name == spec.name
    assert backend.list(tags={TAG_GROUP: "large"}) == []
    assert backend.list(prefix=backend.prefix + "zzz") == []

    shown = json.loads(lxc("query", f"/1.0/instances/{spec.name}").stdout)
    config, expanded = shown["config"], shown["expanded_config"]
    assert config["limits.cpu"] == "1" and config["limits.memory"] == "512MiB"
    assert config["security.nesting"] == "true"
    assert config["user.user-data"] == spec.user_data
    assert config["user.jitconfig"] == spec.jit_config
    assert config["user.ghrm-owner"] == "acme"
    assert "security.privileged" not in expanded
    assert shown["expanded_devices"]["root"]["size"] == "3072MiB"

    # The instance sees its keys through devlxd (what the image's first-boot unit reads).
    def devlxd_group() -> str:
        result = lxc(
            "exec",
            spec.name,
            "--",
            "curl",
            "-sf",
            "--unix-socket",
            "/dev/lxd/sock",
            "http://lxd/1.0/config/user.ghrm-group",
            check=False,
        )
        return result.stdout if result.returncode == 0 else ""

    assert wait_for(devlxd_group, timeout=60, interval=0.5, what="devlxd") == "small"

    backend.delete(spec.name)
    with pytest.raises(InstanceNotFound):
        backend.get(spec.name)
    backend.delete(spec.name)  # idempotent
    assert backend.list() == []


@pytest.mark.needs_lxd
def test_orphans_and_stopped_instances_are_found_and_deleted(
    backend: LXDBackend, runner_image: RunnerImage
) -> None:
    orphan = f"{backend.prefix}-small-orphan"
    lxc("init", runner_image.alias, orphan, timeout=300)  # made behind the backend's back, no tags
    found = backend.list()
    assert [i.name for i in found] == [orphan]
    assert found[0].state is InstanceState.STOPPED and found[0].tags == {}
    assert backend.remove_all() == 1
    assert backend.list() == []

    # A runner that powered itself off is deleted like any other.
    spec = _spec(backend.prefix, runner_image.alias)
    backend.create(spec)
    lxc("stop", "--force", spec.name)
    assert backend.get(spec.name).state is InstanceState.STOPPED
    backend.delete(spec.name)
    with pytest.raises(InstanceNotFound):
        backend.get(spec.name)


@pytest.mark.needs_lxd
def test_missing_image_names_the_alias(backend: LXDBackend, lxd: object) -> None:
    spec = _spec(backend.prefix, "ghrm-no-such-image")
    with pytest.raises(BackendError, match=r"ghrm-no-such-image.*build") as failure:
        backend.create(spec)
    assert not isinstance(failure.value, InstanceNotFound | CapacityError)
    assert backend.list() == []

    class Group:
        image = "ghrm-no-such-image"

    with pytest.raises(BackendError, match="ghrm-no-such-image"):
        backend.validate(Group())


@pytest.mark.needs_lxd
def test_project_limit_is_a_capacity_error(runner_image: RunnerImage) -> None:
    project = f"ghrmt-{uuid.uuid4().hex[:6]}"
    lxc(
        "project",
        "create",
        project,
        "-c",
        "features.images=false",
        "-c",
        "features.profiles=false",
        "-c",
        "limits.containers=0",
    )
    try:
        backend = create_backend("lxd", {"project": project}, prefix=_prefix())
        assert isinstance(backend, LXDBackend)
        with pytest.raises(CapacityError):
            backend.create(_spec(backend.prefix, runner_image.alias))
        assert backend.list() == []
    finally:
        lxc("project", "delete", project, check=False)


@pytest.fixture
def https_listener(lxd: object) -> Iterator[str]:
    """LXD's API on a loopback TLS port for this test only."""
    previous = lxc("config", "get", "core.https_address").stdout.strip()
    address = f"127.0.0.1:{free_port()}"
    lxc("config", "set", "core.https_address", address)
    try:
        yield f"https://{address}"
    finally:
        if previous:
            lxc("config", "set", "core.https_address", previous, check=False)
        else:
            lxc("config", "unset", "core.https_address", check=False)


@pytest.mark.needs_lxd
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_remote_lxd_over_tls(https_listener: str, tmp_path: Path) -> None:
    """Untrusted client certificate → AuthError; once trusted, the pinned server cert works."""
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ghrm-untrusted",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    backend = LXDBackend(
        {"url": https_listener, "cert": str(cert), "key": str(key), "verify": False},
        prefix=_prefix(),
    )
    with pytest.raises(AuthError):
        backend.list()

    # Pinned server certificate (REQUESTS_CA_BUNDLE in the environment must not replace it).
    server_cert = Path("/var/lib/lxd/server.crt")
    assert server_cert.exists()
    lxc("config", "trust", "add", str(cert))
    fingerprint = (
        subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        .stdout.split("=", 1)[1]
        .strip()
        .replace(":", "")
        .lower()
    )
    try:
        trusted = LXDBackend(
            {"url": https_listener, "cert": str(cert), "key": str(key), "verify": str(server_cert)},
            prefix=_prefix(),
        )
        assert trusted.list() == []
        trusted.close()
    finally:
        lxc("config", "trust", "remove", fingerprint, check=False)
