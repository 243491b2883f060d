"""vCenter and standalone ESXi discovery through pyvmomi.

One PropertyCollector retrieval over one ContainerView of the whole inventory (VMs, hosts, clusters,
datacenters, folders, datastores, networks) fetches every fact at once: the cost is a few SOAP pages,
never a round trip per VM (see benchmarks/discover_vcsim.py). The pure half of this module,
`machine_from_properties`, maps one VM's properties onto `dr.model.Machine`; the support matrix's
verdict is `dr.rules.replicability` applied to the result.

pyvmomi is imported inside functions: `dr --help` works without the `vmware` extra.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from dr.discover.errors import (
    BadCredentials,
    CertificateUntrusted,
    MissingPrivilege,
    SourceError,
    SourceTimeout,
    SourceUnreachable,
)
from dr.errors import MissingExtra
from dr.model import DEFAULT_SUPPORT_PROFILE, Disk, Machine, Replicability, VmwareFacts

if TYPE_CHECKING:
    from collections.abc import Callable

GIB = 1024**3  # bytes in a GB as the spec counts disk and memory sizes (vSphere reports binary units)
MIB_PER_GB = 1024  # config.hardware.memoryMB is MiB
# Privileges discovery needs on the root folder (vSphere's read-only role has both).
DISCOVERY_PRIVILEGES: tuple[str, ...] = ("System.View", "System.Read")
PAGE_SIZE = 500  # objects per RetrievePropertiesEx page (vCenter caps pages itself as well)

VM_PROPERTIES: tuple[str, ...] = (
    "name",
    "config.instanceUuid",
    "config.template",
    "config.guestId",
    "config.guestFullName",
    "config.firmware",
    "config.bootOptions",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "runtime.powerState",
    "runtime.host",
    "guest.toolsRunningStatus",
    "guest.toolsStatus",
    "guest.guestFullName",
    "guest.guestId",
    "guest.guestFamily",
    "guest.net",
    "network",
)

# vSphere controller classes -> the spec's controller names and the perf-counter instance prefix.
_CONTROLLERS: Mapping[str, tuple[str, str]] = {
    "ParaVirtualSCSIController": ("pvscsi", "scsi"),
    "VirtualLsiLogicController": ("lsilogic", "scsi"),
    "VirtualLsiLogicSASController": ("lsilogic-sas", "scsi"),
    "VirtualBusLogicController": ("buslogic", "scsi"),
    "VirtualIDEController": ("ide", "ide"),
    "VirtualAHCIController": ("sata", "sata"),
    "VirtualNVMEController": ("nvme", "nvme"),
}

# Guest ids whose name alone says the OS (used when neither tools nor config give a parseable name).
_GUEST_IDS: Mapping[str, str] = {
    "windows7Server64Guest": "Windows Server 2008 R2",
    "winLonghorn64Guest": "Windows Server 2008",
    "winLonghornGuest": "Windows Server 2008",
    "windows8Server64Guest": "Windows Server 2012",
    "windows9Server64Guest": "Windows Server 2016",
    "windows2019srv_64Guest": "Windows Server 2019",
    "windows2019srvNext_64Guest": "Windows Server 2022",
    "winNetEnterpriseGuest": "Windows Server 2003",
    "winNetStandardGuest": "Windows Server 2003",
    "centos64Guest": "CentOS",
    "centos6_64Guest": "CentOS 6",
    "centos7_64Guest": "CentOS 7",
    "centos8_64Guest": "CentOS 8",
    "rhel5_64Guest": "RHEL 5",
    "rhel6_64Guest": "RHEL 6",
    "rhel7_64Guest": "RHEL 7",
    "rhel8_64Guest": "RHEL 8",
    "rhel9_64Guest": "RHEL 9",
    "sles11_64Guest": "SLES 11",
    "sles12_64Guest": "SLES 12",
    "sles15_64Guest": "SLES 15",
    "oracleLinux64Guest": "Oracle Linux",
    "oracleLinux6_64Guest": "Oracle Linux 6",
    "oracleLinux7_64Guest": "Oracle Linux 7",
    "ubuntu64Guest": "Ubuntu",
    "debian10_64Guest": "Debian 10",
    "debian11_64Guest": "Debian 11",
    "debian12_64Guest": "Debian 12",
}


@dataclass(frozen=True)
class Source:
    """Where and how to reach a vCenter or ESXi host. The password never appears in repr or output."""

    host: str
    user: str
    password: str = field(repr=False)
    port: int = 443
    protocol: str = "https"  # "http" only for simulators
    insecure: bool = False
    timeout: float = 60.0  # seconds without an answer before giving up

    @property
    def where(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Inventory:
    """What one discovery found: the source's identity and every VM as a `Machine`."""

    vcenter: str
    product: str        # "VirtualCenter" (vCenter) or "HostAgent" (standalone ESXi)
    version: str        # "6.5" / "5.5": the major.minor the support matrix compares
    full_version: str   # AboutInfo.fullName
    machines: tuple[Machine, ...]


# ---------------------------------------------------------------------------------------------
# Connecting: every library error becomes one line, credentials never in it.


def _pyvmomi() -> tuple[Any, Any]:
    try:
        from pyVim import connect
        from pyVmomi import vim
    except ImportError:
        raise MissingExtra("dr discover vcenter needs the 'vmware' extra: pip install 'dr-as-code[vmware]'") from None
    return connect, vim


def translate(source: Source, err: BaseException) -> SourceError:
    """The one-line error for a failure talking to `source`."""
    _, vim = _pyvmomi()
    where = source.where
    if isinstance(err, ssl.SSLCertVerificationError) or (
        isinstance(err, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(err)
    ):
        return CertificateUntrusted(
            f"{where}: the TLS certificate is not trusted ({getattr(err, 'verify_message', 'verify failed')}); "
            "install the vCenter's CA certificate, or pass --insecure for a lab"
        )
    if isinstance(err, (socket.timeout, TimeoutError)):
        return SourceTimeout(
            f"{where}: no answer within {source.timeout:g} s; check the host and the network, or raise --timeout"
        )
    if isinstance(err, vim.fault.InvalidLogin):
        return BadCredentials(
            f"{where}: the user name or password was refused for user {source.user!r}; "
            "check --user and the variable named by --password-env"
        )
    if isinstance(err, (vim.fault.NoPermission, vim.fault.NotAuthenticated)):
        privilege = getattr(err, "privilegeId", None) or "System.Read"
        return MissingPrivilege(
            f"{where}: user {source.user!r} lacks the privilege {privilege}; give it the Read-only role "
            "on the vCenter root (propagated)"
        )
    if isinstance(err, (ConnectionError, socket.gaierror, OSError)):
        reason = getattr(err, "strerror", None) or type(err).__name__
        return SourceUnreachable(
            f"{where}: cannot connect ({reason}); check --host and --port and that vCenter/ESXi is running"
        )
    message = getattr(err, "msg", None) or str(err) or type(err).__name__
    return SourceError(f"{where}: {message.splitlines()[0][:200]}")


def connect(source: Source) -> Any:
    """Log in and return the ServiceInstance. Raises a `SourceError` subclass, one line each."""
    connect_mod, vim = _pyvmomi()
    kwargs: dict[str, Any] = {}
    if source.protocol == "https":
        if source.insecure:
            kwargs["disableSslCertValidation"] = True
        else:
            kwargs["sslContext"] = ssl.create_default_context()
    try:
        si = connect_mod.SmartConnect(
            protocol=source.protocol, host=source.host, port=source.port, user=source.user,
            pwd=source.password, httpConnectionTimeout=source.timeout, **kwargs,
        )
    except (vim.fault.InvalidLogin, vim.fault.NoPermission, vim.fault.NotAuthenticated, OSError) as err:
        raise translate(source, err) from None
    except Exception as err:  # pyVmomi wraps some socket errors in its own types
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise translate(source, cause) from None
        raise translate(source, err) from None
    return si


def disconnect(si: Any) -> None:
    connect_mod, _ = _pyvmomi()
    with contextlib.suppress(Exception):  # logging out of a dead session is not worth reporting
        connect_mod.Disconnect(si)


def check_privileges(si: Any, source: Source, privileges: Sequence[str] = DISCOVERY_PRIVILEGES) -> None:
    """Raise MissingPrivilege unless the session holds `privileges` on the root folder."""
    from pyVmomi import vmodl

    content = si.RetrieveContent()
    session = content.sessionManager.currentSession
    if session is None:
        raise MissingPrivilege(f"{source.where}: no session after login; check the user's role")
    # HasPrivilegeOnEntities answers privilege by privilege (an absent isGranted counts as refused);
    # vSphere before 5.5 only has HasPrivilegeOnEntity, which answers a list of booleans.
    manager = content.authorizationManager
    try:
        answers = manager.HasPrivilegeOnEntities(entity=[content.rootFolder], sessionId=session.key,
                                                 privId=list(privileges))
        granted = {a.privId: bool(a.isGranted) for e in answers or [] for a in e.privAvailability or []}
    except vmodl.fault.MethodNotFound:
        flags = manager.HasPrivilegeOnEntity(entity=content.rootFolder, sessionId=session.key,
                                             privId=list(privileges))
        granted = dict(zip(privileges, (bool(f) for f in flags), strict=False))
    missing = [p for p in privileges if not granted.get(p, False)]
    if missing:
        raise MissingPrivilege(
            f"{source.where}: user {source.user!r} lacks {', '.join(missing)} on the root folder; give it the "
            "Read-only role on the vCenter root (propagated)"
        )


def guarded(source: Source, work: Callable[[], Any]) -> Any:
    """Run `work`, turning pyvmomi, HTTP and socket failures into one-line `SourceError`s."""
    import http.client

    from pyVmomi import vmodl

    _, vim = _pyvmomi()
    try:
        return work()
    except SourceError:
        raise
    except (vim.fault.NoPermission, vim.fault.NotAuthenticated, OSError) as err:
        raise translate(source, err) from None
    except (vmodl.MethodFault, http.client.HTTPException) as err:
        raise translate(source, err) from None


# ---------------------------------------------------------------------------------------------
# Retrieval: one container view, one PropertyCollector retrieval (paged).


def retrieve(
    si: Any, types: Mapping[Any, Sequence[str]], page_size: int = PAGE_SIZE,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Every object of `types` under the root folder with the named properties, in pages."""
    _, vim = _pyvmomi()
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, list(types), True)
    try:
        collector = content.propertyCollector
        traversal = vim.PropertyCollector.TraversalSpec(
            name="view", type=vim.view.ContainerView, path="view", skip=False)
        spec = vim.PropertyCollector.FilterSpec(
            objectSet=[vim.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
            propSet=[vim.PropertyCollector.PropertySpec(type=kind, pathSet=list(paths), all=False)
                     for kind, paths in types.items()],
        )
        result = collector.RetrievePropertiesEx([spec], vim.PropertyCollector.RetrieveOptions(maxObjects=page_size))
        while result is not None:
            for item in result.objects:
                yield item.obj, {prop.name: prop.val for prop in item.propSet}
            if not result.token:
                break
            result = collector.ContinueRetrievePropertiesEx(result.token)
    finally:
        view.Destroy()


def retrieve_names(si: Any, kind: Any) -> list[str]:
    """Only the names of every object of `kind`: the benchmark's baseline."""
    return [props.get("name", "") for _, props in retrieve(si, {kind: ("name",)})]


# ---------------------------------------------------------------------------------------------
# Mapping one VM onto the model (pure: properties in, Machine out).


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "disk"


def _version(about_version: str) -> str:
    """'6.5.0' -> '6.5': the support matrix compares major.minor."""
    parts = about_version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else about_version


def guest_os(full_names: Sequence[str | None], guest_id: str | None) -> tuple[str, str]:
    """The OS as a human string the validator parses, and the architecture, from vSphere's guest facts."""
    from dr.osinfo import parse_os

    arch = "x86_64"
    texts = [t for t in full_names if t]
    joined = " ".join(texts) + " " + (guest_id or "")
    if "32-bit" in joined or (guest_id and guest_id.endswith("Guest") and "64" not in guest_id
                              and guest_id not in ("otherGuest",)):
        arch = "x86"
    for text in texts:
        cleaned = re.sub(r"\s*\((32|64)-bit\)", "", text).strip()
        cleaned = cleaned.removeprefix("Microsoft ").strip()
        if parse_os(cleaned) is not None:
            return cleaned, arch
    if guest_id and guest_id in _GUEST_IDS:
        return _GUEST_IDS[guest_id], arch
    cleaned = re.sub(r"\s*\((32|64)-bit\)", "", texts[0]).strip() if texts else (guest_id or "unknown")
    return cleaned or "unknown", arch


def _tools(running: str | None, status: str | None) -> str:
    if status == "toolsNotInstalled":
        return "not_installed"
    if running == "guestToolsRunning":
        return "running"
    return "not_running"


@dataclass(frozen=True)
class Lookup:
    """Names and parents of the inventory objects, by managed object id, from the same retrieval."""

    names: Mapping[str, str]
    parents: Mapping[str, str]
    kinds: Mapping[str, str]

    def ancestor(self, moid: str | None, kind: str) -> str | None:
        seen = 0
        while moid is not None and seen < 64:
            if self.kinds.get(moid) == kind:
                return self.names.get(moid)
            moid = self.parents.get(moid)
            seen += 1
        return None


def _text(value: Any) -> str | None:
    """vSphere's unset or empty strings -> None (the model's text fields are never empty)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _moid(ref: Any) -> str | None:
    return None if ref is None else str(ref._moId)


def _datastore_of(backing: Any, lookup: Lookup) -> str | None:
    ref = getattr(backing, "datastore", None)
    if ref is not None and _moid(ref) in lookup.names:
        return lookup.names[str(_moid(ref))]
    match = re.match(r"^\[([^\]]+)\]", getattr(backing, "fileName", "") or "")
    return match.group(1) if match else None


def machine_from_properties(
    props: Mapping[str, Any], moid: str, lookup: Lookup, *, site: str, vcenter: str, version: str,
) -> Machine:
    """One VM's properties (as retrieved) -> a `Machine` of kind vmware, without the verdict."""
    devices = list(props.get("config.hardware.device") or [])
    controllers = {d.key: d for d in devices if type(d).__name__.split(".")[-1] in _CONTROLLERS}
    disks: list[Disk] = []
    used_names: set[str] = set()
    nics = 0
    for device in devices:
        kind = type(device).__name__.split(".")[-1]
        if hasattr(device, "macAddress") and hasattr(device, "addressType"):
            nics += 1
            continue
        if kind != "VirtualDisk":
            continue
        label = (_text(device.deviceInfo.label) if device.deviceInfo is not None else None) or f"disk {device.key}"
        name = _slug(label)
        while name in used_names:
            name += "-x"
        used_names.add(name)
        controller = controllers.get(device.controllerKey)
        controller_name: str | None = None
        instance: str | None = None
        if controller is not None:
            controller_name, prefix = _CONTROLLERS[type(controller).__name__.split(".")[-1]]
            instance = f"{prefix}{controller.busNumber}:{device.unitNumber}"
        capacity = device.capacityInBytes or (device.capacityInKB or 0) * 1024
        thin = getattr(device.backing, "thinProvisioned", None)
        disks.append(Disk(
            name=name,
            size_gb=max(round(capacity / GIB, 3), 0.001),
            label=label,
            device=instance,
            controller=controller_name,
            datastore=_datastore_of(device.backing, lookup),
            thin=None if thin is None else bool(thin),
        ))
    guest_id = props.get("guest.guestId") or props.get("config.guestId")
    os_name, arch = guest_os(
        [props.get("guest.guestFullName"), props.get("config.guestFullName")], props.get("config.guestId")
    )
    boot = props.get("config.bootOptions")
    secure_boot = bool(getattr(boot, "efiSecureBootEnabled", False)) if boot is not None else False
    host_moid = _moid(props.get("runtime.host"))
    networks = [lookup.names[m] for m in (str(_moid(n)) for n in props.get("network") or []) if m in lookup.names]
    addresses: list[str] = []
    for nic in props.get("guest.net") or []:
        for address in nic.ipAddress or []:
            if address not in addresses:
                addresses.append(address)
    firmware = "uefi" if props.get("config.firmware") == "efi" else "bios"
    vmware = VmwareFacts(
        instance_uuid=_text(props.get("config.instanceUuid")),
        moid=moid,
        datacenter=_text(lookup.ancestor(host_moid, "Datacenter")),
        cluster=_text(lookup.ancestor(host_moid, "ClusterComputeResource")),
        host=_text(lookup.names.get(host_moid or "")),
        vcenter=vcenter,
        vcenter_version=version,
        guest_id=_text(guest_id),
        guest_family=_text(props.get("guest.guestFamily")),
        guest_full_name=_text(props.get("guest.guestFullName")) or _text(props.get("config.guestFullName")),
        networks=[n for n in networks if _text(n)],
        ip_addresses=addresses,
    )
    if not disks:  # the model needs one disk; a diskless VM is reported, never dropped
        disks.append(Disk(name="none", size_gb=0.001, label="no virtual disk"))
    return Machine(
        name=props["name"],
        site=site,
        kind="vmware",
        os=os_name,
        arch=arch,
        vcpus=max(int(props.get("config.hardware.numCPU") or 1), 1),
        memory_gb=max(round((props.get("config.hardware.memoryMB") or 1) / MIB_PER_GB, 3), 0.001),
        nics=max(nics, 1),
        disks=disks,
        firmware=firmware,
        secure_boot=secure_boot,
        power_state="on" if props.get("runtime.powerState") == "poweredOn" else "off",
        tools=_tools(props.get("guest.toolsRunningStatus"), props.get("guest.toolsStatus")),
        address=addresses[0] if addresses else None,
        vmware=vmware,
    )


def with_verdict(machine: Machine, profile: str) -> Machine:
    """The machine with `discovery:` set from the support matrix of `profile`."""
    from dr.rules import replicability

    reasons = replicability(machine, profile)
    return machine.model_copy(update={"discovery": Replicability(replicable=not reasons, reasons=reasons)})


# ---------------------------------------------------------------------------------------------
# The whole walk.


def discover(
    source: Source, *, site: str, profile: str = DEFAULT_SUPPORT_PROFILE, progress: Callable[[int], None] | None = None,
) -> Inventory:
    """Connect, check privileges, retrieve everything in one round, map every VM (templates skipped)."""
    _, vim = _pyvmomi()
    si = connect(source)
    try:
        def work() -> Inventory:
            check_privileges(si, source)
            about = si.RetrieveContent().about
            version = _version(str(about.version))
            structure = ("name", "parent")
            types: dict[Any, Sequence[str]] = {
                vim.VirtualMachine: VM_PROPERTIES,
                vim.HostSystem: structure,
                vim.ComputeResource: structure,
                vim.Datacenter: structure,
                vim.Folder: structure,
                vim.Datastore: ("name",),
                vim.Network: ("name",),
            }
            names: dict[str, str] = {}
            parents: dict[str, str] = {}
            kinds: dict[str, str] = {}
            vms: list[tuple[str, dict[str, Any]]] = []
            for obj, props in retrieve(si, types):
                moid = str(obj._moId)
                kind = type(obj).__name__.split(".")[-1]
                kinds[moid] = kind
                names[moid] = props.get("name", moid)
                parent = props.get("parent")
                if parent is not None:
                    parents[moid] = str(parent._moId)
                if kind == "VirtualMachine" and not props.get("config.template"):
                    vms.append((moid, props))
            lookup = Lookup(names=names, parents=parents, kinds=kinds)
            machines = []
            for moid, props in vms:
                try:
                    machine = machine_from_properties(props, moid, lookup, site=site, vcenter=source.host,
                                                      version=version)
                except ValidationError as err:
                    first = err.errors()[0]
                    raise SourceError(
                        f"{source.where}: VM {props.get('name')!r} ({moid}): {'.'.join(map(str, first['loc']))}: "
                        f"{first['msg']}, found {first.get('input')!r}; fix the VM in vSphere"
                    ) from None
                machines.append(with_verdict(machine, profile))
                if progress is not None:
                    progress(1)
            machines.sort(key=lambda m: m.name)
            return Inventory(vcenter=source.host, product=str(about.apiType), version=version,
                             full_version=str(about.fullName), machines=tuple(machines))

        result: Inventory = guarded(source, work)
        return result
    finally:
        disconnect(si)
