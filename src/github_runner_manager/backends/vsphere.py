"""vSphere backend: one VM per runner, cloned from a template VM through pyvmomi.

A runner VM is a clone of ``template`` (or of the group's ``image`` taken as a template name) with the
group's CPUs and memory, the user-data in ``guestinfo.userdata`` (base64, with
``guestinfo.userdata.encoding``, plus a ``guestinfo.metadata`` naming the instance: what cloud-init's
VMware datasource reads), the manager's tags as custom field values (the fields are defined on first
use), then powered on. ``list`` reads every VM's name, power state and custom values in one property
collector call and keeps those with our prefix, so orphans are found without any database.

Tasks are polled (not waited on through a shared property collector filter), so several threads may
create and delete at once. An expired session is re-established once per call.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import Field, SecretStr, field_validator

from github_runner_manager.backends._common import ReadableFile
from github_runner_manager.backends.base import (
    AuthError,
    Backend,
    BackendError,
    BackendSettings,
    CapacityError,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    missing_dependency,
)
from github_runner_manager.units import MIB

try:
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim, vmodl
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("vsphere", "pyvmomi", extra="vsphere") from _exc

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: VM power states → provider-neutral states.
STATE_MAP: dict[str, InstanceState] = {
    "poweredOn": InstanceState.RUNNING,
    "poweredOff": InstanceState.STOPPED,
    "suspended": InstanceState.STOPPED,
}
#: Faults meaning "no room": another backend may take the runner.
CAPACITY_FAULTS: tuple[type[Exception], ...] = (
    vim.fault.InsufficientResourcesFault,
    vim.fault.NoDiskSpace,
)
#: Faults meaning "these credentials may not do this".
AUTH_FAULTS: tuple[type[Exception], ...] = (
    vim.fault.InvalidLogin,
    vim.fault.NoPermission,
    vim.fault.NotAuthenticated,
)
_VM_PROPERTIES = [
    "name",
    "runtime.powerState",
    "customValue",
    "config.template",
    "config.createDate",
    "guest.ipAddress",
]


class VSphereSettings(BackendSettings):
    """``backends.vsphere`` in the manager's configuration.

    Attributes:
        host, port, user, password: the vCenter (or ESXi) to log in to.
        insecure: skip TLS certificate verification (vcsim, lab set-ups); else ``ca_file`` or the system CAs.
        datacenter: datacenter name (default: the first one).
        cluster / resource_pool: where clones run (a resource pool is an inventory path or a name);
            default: the template's resource pool.
        datastore: datastore name for the clones (default: the template's).
        folder: VM folder path under the datacenter's ``vm`` folder (default: that folder).
        template: VM or template to clone (default: the group's ``image``).
        max_instances: refuse (capacity error) beyond this many VMs with our prefix; 0 = no cap.
        timeout: seconds for each HTTP request; task_timeout: seconds to wait for a task.
    """

    host: str = Field(min_length=1)
    port: int = Field(default=443, gt=0, lt=65536)
    user: str = Field(min_length=1)
    password: SecretStr
    insecure: bool = False
    ca_file: ReadableFile | None = None
    datacenter: str | None = None
    cluster: str | None = None
    resource_pool: str | None = None
    datastore: str | None = None
    folder: str | None = None
    template: str | None = None
    max_instances: int = Field(default=0, ge=0)
    timeout: float = Field(default=30.0, gt=0)
    task_timeout: float = Field(default=600.0, gt=0)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if "://" in value or "/" in value:
            raise ValueError(f"{value!r} must be a host name or address, without scheme or path")
        return value


class VSphereBackend(Backend):
    """Runners as VMs cloned from a template."""

    name: ClassVar[str] = "vsphere"
    settings_model: ClassVar[type[BackendSettings]] = VSphereSettings
    settings: VSphereSettings
    provider_errors: ClassVar[tuple[type[Exception], ...]] = (
        vmodl.MethodFault,
        OSError,
        ValueError,
    )

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        super().__init__(settings, prefix=prefix)
        self._lock = threading.RLock()
        self._si: Any = None
        self._fields: dict[str, int] = {}

    # ------------------------------------------------------------------ session
    def _connect(self) -> Any:
        with self._lock:
            if self._si is None:
                s = self.settings
                context = None
                if not s.insecure:
                    context = ssl.create_default_context(
                        cafile=str(s.ca_file) if s.ca_file else None
                    )
                with self._errors(f"logging in to {s.host}:{s.port}"):
                    self._si = SmartConnect(
                        host=s.host,
                        port=s.port,
                        user=s.user,
                        pwd=s.password.get_secret_value(),
                        sslContext=context,
                        disableSslCertValidation=s.insecure,
                        httpConnectionTimeout=s.timeout,
                    )
                self._fields = {}
            return self._si

    @property
    def content(self) -> Any:
        """The ``ServiceContent`` of the logged-in session."""
        return self._connect().RetrieveContent()

    def close(self) -> None:
        """Log out."""
        with self._lock:
            if self._si is not None:
                try:
                    Disconnect(self._si)
                except Exception:
                    logger.debug("vsphere: logout failed", exc_info=True)
            self._si = None

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with errors mapped; log in again once if the session expired."""
        try:
            with self._errors(action):
                return fn()
        except AuthError as exc:
            if "NotAuthenticated" not in str(exc):
                raise
            logger.info("vsphere: session expired; logging in again")
            with self._lock:
                self._si = None
            with self._errors(action):
                return fn()

    def _translate(self, action: str, exc: Exception) -> BackendError:
        """Map vSphere faults and transport errors onto the contract's error classes."""
        if isinstance(exc, CAPACITY_FAULTS):
            return CapacityError(f"vsphere: {action}: {_fault(exc)}")
        if isinstance(exc, AUTH_FAULTS):
            return AuthError(f"vsphere: {action}: {_fault(exc)}")
        if isinstance(exc, vmodl.fault.ManagedObjectNotFound):
            return InstanceNotFound(f"vsphere: {action}: {_fault(exc)}")
        if isinstance(exc, vmodl.MethodFault):
            return BackendError(f"vsphere: {action}: {_fault(exc)}")
        if isinstance(exc, ssl.SSLError):
            return BackendError(
                f"vsphere: {action}: TLS failed ({exc}); give ca_file, or insecure: true for a lab"
            )
        return BackendError(f"vsphere: {action}: {exc}")

    def _wait(self, task: Any, action: str) -> Any:
        """Poll a task until it ends; raise its fault (mapped by the caller's ``_errors``)."""
        deadline = time.monotonic() + self.settings.task_timeout
        delay = 0.05
        while True:
            info = task.info
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                raise info.error
            if time.monotonic() > deadline:
                raise BackendError(
                    f"vsphere: {action}: task {task._moId} still {info.state} after {self.settings.task_timeout}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------------ inventory
    def _datacenter(self) -> Any:
        wanted = self.settings.datacenter
        for entity in self.content.rootFolder.childEntity:
            if isinstance(entity, vim.Datacenter) and (wanted is None or entity.name == wanted):
                return entity
        raise BackendError(
            f"vsphere: no datacenter {wanted or ''} (backends.vsphere.datacenter)".replace(
                "  ", " "
            )
        )

    def _find(self, root: Any, kind: Any, name: str) -> Any:
        view = self.content.viewManager.CreateContainerView(root, [kind], True)
        try:
            for obj in view.view:
                if obj.name == name:
                    return obj
        finally:
            view.Destroy()
        return None

    def _placement(self, spec: InstanceSpec) -> tuple[Any, Any, Any, Any]:
        """Template VM, target folder, resource pool and datastore (None: the template's)."""
        s = self.settings
        dc = self._datacenter()
        template_name = s.template or str(spec.extra.get("template") or spec.image)
        template = self.content.searchIndex.FindByInventoryPath(f"{dc.name}/vm/{template_name}")
        if template is None:
            template = self._find(dc.vmFolder, vim.VirtualMachine, template_name)
        if template is None:
            raise BackendError(
                f"vsphere: no template VM {template_name!r} in {dc.name} (backends.vsphere.template)"
            )
        folder = dc.vmFolder
        if s.folder:
            folder = self.content.searchIndex.FindByInventoryPath(
                f"{dc.name}/vm/{s.folder.strip('/')}"
            )
            if folder is None:
                raise BackendError(
                    f"vsphere: no VM folder {s.folder!r} in {dc.name} (backends.vsphere.folder)"
                )
        pool = None
        if s.resource_pool:
            pool = self.content.searchIndex.FindByInventoryPath(s.resource_pool) or self._find(
                dc.hostFolder, vim.ResourcePool, s.resource_pool
            )
            if pool is None:
                raise BackendError(
                    f"vsphere: no resource pool {s.resource_pool!r} (backends.vsphere.resource_pool)"
                )
        elif s.cluster:
            cluster = self._find(dc.hostFolder, vim.ClusterComputeResource, s.cluster)
            if cluster is None:
                raise BackendError(
                    f"vsphere: no cluster {s.cluster!r} in {dc.name} (backends.vsphere.cluster)"
                )
            pool = cluster.resourcePool
        elif template.resourcePool is None:
            raise BackendError(
                f"vsphere: {template_name!r} is a template without a resource pool: set backends.vsphere.cluster or resource_pool"
            )
        datastore = None
        if s.datastore:
            datastore = next((d for d in dc.datastore if d.name == s.datastore), None)
            if datastore is None:
                raise BackendError(
                    f"vsphere: no datastore {s.datastore!r} in {dc.name} (backends.vsphere.datastore)"
                )
        return template, folder, pool, datastore

    def _field_keys(self, names: builtins.list[str]) -> dict[str, int]:
        """Custom field keys for tag names, defining the missing fields (on VMs)."""
        with self._lock:
            manager = self.content.customFieldsManager
            if not self._fields or any(n not in self._fields for n in names):
                self._fields = {f.name: f.key for f in manager.field or []}
            for name in names:
                if name in self._fields:
                    continue
                try:
                    definition = manager.AddCustomFieldDef(name=name, moType=vim.VirtualMachine)
                    self._fields[name] = definition.key
                except vim.fault.DuplicateName:
                    self._fields = {f.name: f.key for f in manager.field or []}
            return {n: self._fields[n] for n in names}

    def _collect(self) -> builtins.list[tuple[Any, dict[str, Any]]]:
        """(vm, properties) for every VM of the datacenter, in one property collector pass."""
        content = self.content
        view = content.viewManager.CreateContainerView(
            self._datacenter().vmFolder, [vim.VirtualMachine], True
        )
        try:
            traversal = vmodl.query.PropertyCollector.TraversalSpec(
                name="view", path="view", skip=False, type=vim.view.ContainerView
            )
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[
                    vmodl.query.PropertyCollector.ObjectSpec(
                        obj=view, skip=True, selectSet=[traversal]
                    )
                ],
                propSet=[
                    vmodl.query.PropertyCollector.PropertySpec(
                        type=vim.VirtualMachine, pathSet=_VM_PROPERTIES
                    )
                ],
            )
            collector = content.propertyCollector
            result = collector.RetrievePropertiesEx(
                [spec], vmodl.query.PropertyCollector.RetrieveOptions()
            )
            found = []
            while result is not None:
                for obj in result.objects:
                    found.append((obj.obj, {p.name: p.val for p in obj.propSet or []}))
                if not result.token:
                    break
                result = collector.ContinueRetrievePropertiesEx(result.token)
            return found
        finally:
            view.Destroy()

    def _tags(self, custom_values: Any) -> dict[str, str]:
        names = {key: name for name, key in self._fields.items()}
        if any(v.key not in names for v in custom_values or []):
            self._fields = {f.name: f.key for f in self.content.customFieldsManager.field or []}
            names = {key: name for name, key in self._fields.items()}
        return {names[v.key]: str(v.value) for v in custom_values or [] if v.key in names}

    def _instance(self, vm: Any, props: Mapping[str, Any]) -> Instance:
        created = props.get("config.createDate")
        return Instance(
            name=str(props.get("name", "")),
            state=STATE_MAP.get(str(props.get("runtime.powerState")), InstanceState.UNKNOWN),
            tags=self._tags(props.get("customValue")),
            created_at=created.timestamp() if isinstance(created, datetime) else None,
            address=props.get("guest.ipAddress"),
            backend=self.name,
            extra={"moref": vm._moId},
        )

    def _vms(
        self, name: str | None = None, prefix: str = ""
    ) -> builtins.list[tuple[Any, dict[str, Any]]]:
        return [
            (vm, props)
            for vm, props in self._collect()
            if not props.get("config.template")
            and (
                props.get("name") == name
                if name is not None
                else str(props.get("name", "")).startswith(prefix)
            )
        ]

    # ------------------------------------------------------------------ contract
    def create(self, spec: InstanceSpec) -> Instance:
        """Clone the template, tag the clone and power it on; CapacityError when vSphere has no room."""
        s = self.settings
        self._check_room(s.max_instances, "VMs")
        started = time.monotonic()
        metadata = json.dumps({"instance-id": spec.name, "local-hostname": spec.name})
        extra_config = [
            vim.option.OptionValue(
                key="guestinfo.userdata", value=base64.b64encode(spec.user_data.encode()).decode()
            ),
            vim.option.OptionValue(key="guestinfo.userdata.encoding", value="base64"),
            vim.option.OptionValue(
                key="guestinfo.metadata", value=base64.b64encode(metadata.encode()).decode()
            ),
            vim.option.OptionValue(key="guestinfo.metadata.encoding", value="base64"),
        ]

        def clone() -> Any:
            template, folder, pool, datastore = self._placement(spec)
            location = vim.vm.RelocateSpec()
            if pool is not None:
                location.pool = pool
            if datastore is not None:
                location.datastore = datastore
            config = vim.vm.ConfigSpec(
                numCPUs=spec.cpu, memoryMB=max(4, spec.memory // MIB), extraConfig=extra_config
            )
            clone_spec = vim.vm.CloneSpec(
                location=location, config=config, powerOn=False, template=False
            )
            task = template.CloneVM_Task(folder=folder, name=spec.name, spec=clone_spec)
            return self._wait(task, f"cloning {spec.name}")

        vm = self._call(f"cloning a VM for {spec.name}", clone)
        try:

            def finish() -> None:
                keys = self._field_keys(list(spec.tags))
                manager = self.content.customFieldsManager
                for name, value in spec.tags.items():
                    manager.SetField(entity=vm, key=keys[name], value=value)
                hardware = vm.config.hardware
                memory_mb = max(4, spec.memory // MIB)
                if hardware.numCPU != spec.cpu or hardware.memoryMB != memory_mb:
                    # Some servers (vcsim among them) copy the template's size and ignore the clone spec's.
                    resize = vim.vm.ConfigSpec(numCPUs=spec.cpu, memoryMB=memory_mb)
                    self._wait(vm.ReconfigVM_Task(spec=resize), f"resizing {spec.name}")
                if vm.runtime.powerState != vim.VirtualMachine.PowerState.poweredOn:
                    self._wait(vm.PowerOnVM_Task(), f"powering on {spec.name}")

            self._call(f"tagging and powering on {spec.name}", finish)
        except BackendError:
            self._destroy(vm, spec.name)
            raise
        logger.info(
            "vsphere: created %s (%s) in %.2fs", spec.name, vm._moId, time.monotonic() - started
        )
        return self.get(spec.name)

    def get(self, name: str) -> Instance:
        """The VM named ``name``; InstanceNotFound if there is none."""
        found = self._call(f"getting VM {name}", lambda: self._vms(name=name))
        if not found:
            raise InstanceNotFound(f"vsphere: no VM named {name!r}")
        return self._call(f"reading VM {name}", lambda: self._instance(*found[0]))

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """VMs (not templates) whose name starts with the prefix and whose custom values carry ``tags``."""
        wanted = self._wanted_prefix(prefix)

        def collect() -> list[Instance]:
            return [self._instance(vm, props) for vm, props in self._vms(prefix=wanted)]

        return self._select(self._call("listing VMs", collect), prefix, tags)

    def delete(self, name: str) -> None:
        """Power off and destroy every VM named ``name``; none is not an error."""
        for vm, _ in self._call(f"finding VM {name}", lambda: self._vms(name=name)):
            self._destroy(vm, name)

    def validate(self, group: Any) -> None:
        """A group fits when its template, folder, pool and datastore can be found."""
        image = str(getattr(group, "image", "") or "")
        probe = InstanceSpec(
            name="validate",
            group=str(getattr(group, "name", "")),
            image=image,
            cpu=1,
            memory=0,
            disk=0,
            user_data="",
            jit_config="",
            tags={},
        )
        self._call("checking the placement", lambda: self._placement(probe))

    # ------------------------------------------------------------------ helpers
    def _destroy(self, vm: Any, name: str) -> None:
        def destroy() -> None:
            if vm.runtime.powerState == vim.VirtualMachine.PowerState.poweredOn:
                # It may have powered itself off meanwhile (a finished runner does).
                with contextlib.suppress(vim.fault.InvalidPowerState):
                    self._wait(vm.PowerOffVM_Task(), f"powering off {name}")
            self._wait(vm.Destroy_Task(), f"destroying {name}")

        try:
            self._call(f"destroying VM {name}", destroy)
        except InstanceNotFound:
            return
        logger.info("vsphere: destroyed %s", name)


def _fault(exc: Any) -> str:
    """``FaultType: message`` for a vSphere fault."""
    kind = type(exc).__name__.rsplit(".", 1)[-1]
    return f"{kind}: {getattr(exc, 'msg', '') or str(exc)}"
