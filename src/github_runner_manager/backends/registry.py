"""Backend name → class, imported lazily so boto3, pyvmomi, pylxd, docker and google-cloud load only when chosen."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from github_runner_manager.backends.base import Backend, BackendConfigError, missing_dependency

#: name -> (module, class, pip extra that provides its client library)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "fake": ("github_runner_manager.backends.fake", "FakeBackend", None),
    "lxd": ("github_runner_manager.backends.lxd", "LXDBackend", "lxd"),
    "docker": ("github_runner_manager.backends.docker", "DockerBackend", "docker"),
    "aws": ("github_runner_manager.backends.aws", "AWSBackend", "aws"),
    "gcp": ("github_runner_manager.backends.gcp", "GCPBackend", "gcp"),
    "openstack": ("github_runner_manager.backends.openstack", "OpenStackBackend", "openstack"),
    "vsphere": ("github_runner_manager.backends.vsphere", "VSphereBackend", "vsphere"),
}


def backend_class(name: str) -> type[Backend]:
    """Import and return the class for a backend name.

    Raises:
        BackendConfigError: unknown name (the message lists the known ones).
        MissingDependencyError: the backend's client library is missing (names the pip extra).
    """
    try:
        module_name, class_name, extra = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise BackendConfigError(f"backend {name!r} is unknown; use one of: {known}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("github_runner_manager"):
            raise
        raise missing_dependency(name, exc.name, extra=extra) from None
    cls: type[Backend] = getattr(module, class_name)
    return cls


def create_backend(
    name: str, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr"
) -> Backend:
    """Build a configured backend instance by name."""
    return backend_class(name)(settings or {}, prefix=prefix)
