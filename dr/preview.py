"""`dr preview`: run the Pulumi program offline under Pulumi's own mock runtime and show what it declares.

`pulumi.runtime.set_mocks` replaces the engine: no Pulumi CLI, no Azure credentials, no network.
Every registration is recorded (type, logical name, parent, inputs), secrets stay masked, and the
result is rendered as a tree (text), a table (Markdown) or JSON. `resource_delta` compares the
resources of two specs for `dr diff`.

Imports of pulumi and pulumi_azure_native happen inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dr.azure.contract import StackPlan, from_contract, plan_of
from dr.azure.options import PREVIEW_SSH_KEY, FailoverKind, StackOptions, check, check_spec
from dr.errors import MissingExtra
from dr.model import Estate

if TYPE_CHECKING:
    from pulumi.runtime import MockCallArgs, MockResourceArgs

PROJECT = "dr-azure"
PREVIEW_STACK = "preview"
SECRET = "[secret]"
MOCK_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
MOCK_TENANT = "11111111-1111-1111-1111-111111111111"
# The logical-name input of each azure-native type (its `name` output), for the mock runtime.
_NAME_KEYS = {
    "ResourceGroup": "resourceGroupName",
    "VirtualNetwork": "virtualNetworkName",
    "Subnet": "subnetName",
    "NetworkSecurityGroup": "networkSecurityGroupName",
    "NetworkInterface": "networkInterfaceName",
    "PublicIPAddress": "publicIpAddressName",
    "StorageAccount": "accountName",
    "BlobContainer": "containerName",
    "Vault": "vaultName",
    "Secret": "secretName",
    "VirtualMachine": "vmName",
    "Disk": "diskName",
    "VirtualMachineExtension": "vmExtensionName",
    "Profile": "profileName",
    "RoleAssignment": "roleAssignmentName",
}


@dataclass(frozen=True)
class Declaration:
    """One resource the program registered."""

    urn: str
    type: str
    name: str
    parent: str | None  # the parent's URN (None for the stack itself)
    custom: bool  # a cloud resource (True) or a component (False)
    inputs: dict[str, Any] = field(default_factory=dict)  # secrets replaced by "[secret]"

    @property
    def kind(self) -> str:
        return self.type.rsplit(":", 1)[-1]

    @property
    def key_properties(self) -> dict[str, Any]:
        return key_properties(self.inputs)


def _mask(value: Any) -> Any:
    from pulumi.runtime.rpc import is_rpc_secret

    if is_rpc_secret(value):
        return SECRET
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _rule(rule: dict[str, Any]) -> str:
    sources = rule.get("sourceAddressPrefixes") or [rule.get("sourceAddressPrefix", "*")]
    target = rule.get("destinationAddressPrefix", "*")
    return (
        f"{rule.get('direction', '?').lower()} {rule.get('access', '?').lower()} "
        f"{rule.get('protocol', '*')}/{rule.get('destinationPortRange', '*')} "
        f"from {','.join(sources)} to {target} ({rule.get('name', '')})"
    )


def key_properties(inputs: dict[str, Any]) -> dict[str, Any]:
    """The properties a reviewer checks: size, SKU, region, prefixes, ports, sources."""
    out: dict[str, Any] = {}

    def take(label: str, *path: str) -> None:
        node: Any = inputs
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return
            node = node[part]
        if node not in (None, [], {}):
            out[label] = node

    take("location", "location")
    take("size", "hardwareProfile", "vmSize")
    take("sku", "sku", "name")
    take("kind", "kind")
    take("address_space", "addressSpace", "addressPrefixes")
    take("address_prefix", "addressPrefix")
    take("disk_gb", "diskSizeGB")
    take("create", "creationData", "createOption")
    take("source", "creationData", "sourceUri")
    take("tls", "minimumTlsVersion")
    take("public_blob_access", "allowBlobPublicAccess")
    take("routing", "trafficRoutingMethod")
    take("image", "storageProfile", "imageReference", "offer")
    take("os_disk", "storageProfile", "osDisk", "createOption")
    take("public_access", "publicAccess")
    take("allocation", "publicIPAllocationMethod")
    rules = inputs.get("securityRules")
    if rules:
        out["rules"] = [_rule(r) for r in rules]
    configs = inputs.get("ipConfigurations") or []
    addresses = [c.get("privateIPAddress") or c.get("privateIPAllocationMethod", "Dynamic") for c in configs]
    if addresses:
        out["private_ip"] = addresses
    endpoints = inputs.get("endpoints") or []
    if endpoints:
        out["endpoints"] = [
            f"{e.get('name')} priority {e.get('priority')} -> {e.get('target') or e.get('targetResourceId', '?')}"
            for e in endpoints
        ]
    tags = inputs.get("tags")
    if isinstance(tags, dict) and "dr-bootstrap" in tags:  # a review sees when custom data changes
        out["bootstrap"] = tags["dr-bootstrap"]
    storage_profile = inputs.get("storageProfile")
    data_disks = (storage_profile.get("dataDisks") if isinstance(storage_profile, dict) else None) or []
    if data_disks:
        out["data_disks"] = len(data_disks)
    return out


@dataclass(frozen=True)
class Preview:
    """The result of one offline run: every declaration, in registration order."""

    estate: str
    failover: str
    failover_plan: str | None
    resources: tuple[Declaration, ...]

    def cloud(self) -> list[Declaration]:
        return [r for r in self.resources if r.custom]

    def of_type(self, suffix: str) -> list[Declaration]:
        return [r for r in self.resources if r.type.endswith(suffix)]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.type for r in self.resources if r.type != "pulumi:pulumi:Stack").items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "estate": self.estate,
            "failover": self.failover,
            "failover_plan": self.failover_plan,
            "counts": self.counts(),
            "resources": [
                {
                    "urn": r.urn,
                    "type": r.type,
                    "name": r.name,
                    "parent": r.parent,
                    "custom": r.custom,
                    "properties": r.key_properties,
                    "tags": r.inputs.get("tags", {}),
                }
                for r in self.resources
                if r.type != "pulumi:pulumi:Stack"
            ],
        }


def _mocks_and_monitor() -> Any:
    try:
        import pulumi
        from pulumi.runtime import mocks, rpc
    except ImportError:
        raise MissingExtra("dr preview needs the 'azure' extra: pip install 'dr-as-code[azure]'") from None

    class AzureMocks(pulumi.runtime.Mocks):
        """Deterministic ARM ids and outputs; each output is the input (what the program declared)."""

        def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
            kind = args.typ.rsplit(":", 1)[-1]
            name = args.inputs.get(_NAME_KEYS.get(kind, ""), None) or args.name
            rid = (
                f"/subscriptions/{MOCK_SUBSCRIPTION}/resourceGroups/"
                f"{args.inputs.get('resourceGroupName', name)}/providers/{args.typ.split(':', 1)[-1]}/{name}"
            )
            outputs = dict(args.inputs, name=name)
            if isinstance(args.inputs.get("identity"), dict):
                principal = str(uuid.uuid5(uuid.NAMESPACE_URL, rid))
                outputs["identity"] = dict(args.inputs["identity"], principalId=principal)
                assigned = args.inputs["identity"].get("userAssignedIdentities")
                if isinstance(assigned, list):  # declared as a list of ids, read back as a map of them
                    outputs["identity"]["userAssignedIdentities"] = {i: {} for i in assigned}
            if kind == "UserAssignedIdentity":  # what Azure returns for a new identity
                outputs["principalId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, rid))
                outputs["clientId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, rid + "/client"))
            if kind == "PublicIPAddress":
                outputs["ipAddress"] = "203.0.113.10"  # TEST-NET-3 (RFC 5737): never a real address
            return rid, outputs

        def call(self, args: MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
            given = args.args
            if args.token == "azure-native:authorization:getClientConfig":
                return {
                    "clientId": MOCK_TENANT,
                    "objectId": MOCK_TENANT,
                    "subscriptionId": MOCK_SUBSCRIPTION,
                    "tenantId": MOCK_TENANT,
                }
            if args.token == "azure-native:network:getSubnet":
                return {
                    "id": (
                        f"/subscriptions/{MOCK_SUBSCRIPTION}/resourceGroups/{given['resourceGroupName']}"
                        f"/providers/Microsoft.Network/virtualNetworks/{given['virtualNetworkName']}"
                        f"/subnets/{given['subnetName']}"
                    ),
                    "name": given["subnetName"],
                }
            if args.token == "azure-native:storage:listStorageAccountKeys":
                return {"keys": [{"keyName": "key1", "permissions": "FULL", "value": "cHJldmlldy1vbmx5"}]}
            if args.token == "azure-native:resources:getResourceGroup":
                return {
                    "id": f"/subscriptions/{MOCK_SUBSCRIPTION}/resourceGroups/{given['resourceGroupName']}",
                    "name": given["resourceGroupName"],
                    "location": "existing",
                }
            return {}

    class Recorder(mocks.MockMonitor):
        """The mock monitor, also keeping each registration's parent and inputs (secrets masked)."""

        def __init__(self, m: pulumi.runtime.Mocks) -> None:
            super().__init__(m)
            self.declarations: list[Declaration] = []

        def RegisterResource(self, request: Any) -> Any:
            response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
            self.declarations.append(
                Declaration(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent or None,
                    custom=bool(request.custom),
                    inputs=_mask(rpc.deserialize_properties(request.object)),
                )
            )
            return response

    return AzureMocks(), Recorder


def run(estate: Estate, plan: StackPlan, options: StackOptions, *, stack: str = PREVIEW_STACK) -> Preview:
    """Run `declare` under the mock runtime in a fresh context and return what it registered."""
    if not isinstance(plan, StackPlan):  # the planner's Plan: read through its contract
        plan = from_contract(plan.model_dump(mode="json"))
    check_spec(estate)
    check(estate, plan, options)
    azure_mocks, recorder_class = _mocks_and_monitor()
    from pulumi.runtime import mocks

    from dr.azure.program import declare

    recorder = recorder_class(azure_mocks)

    def body() -> None:
        logger = logging.getLogger("dr.preview.pulumi")
        logger.setLevel(logging.ERROR)
        mocks.set_mocks(azure_mocks, project=PROJECT, stack=stack, preview=True, logger=logger, monitor=recorder)

        def program() -> Any:
            return declare(estate, plan, options).root.urn

        mocks.test(program)()  # type: ignore[no-untyped-call]

    # A fresh context: Pulumi keeps its root stack resource in a ContextVar, so two runs never mix.
    contextvars.Context().run(body)
    from dr.azure.options import failover_plan_name

    return Preview(
        estate=estate.estate,
        failover=options.failover,
        failover_plan=failover_plan_name(estate, options),
        resources=tuple(recorder.declarations),
    )


def preview_options(
    estate: Estate, plan: StackPlan, failover: FailoverKind = "none", failover_plan: str | None = None
) -> StackOptions:
    """Options for an offline run: placeholder secrets (masked in every output, never deployed)."""
    windows = any(m.os == "windows" for m in plan.master_targets)
    return StackOptions(
        ssh_public_key=PREVIEW_SSH_KEY,
        registration_passphrase="preview-placeholder",
        admin_password="preview-placeholder" if windows else None,
        failover=failover,
        failover_plan=failover_plan,
    )


def preview(
    estate: Estate, plan: StackPlan | None = None, failover: FailoverKind = "none", failover_plan: str | None = None
) -> Preview:
    plan = plan if plan is not None else plan_of(estate)
    return run(estate, plan, preview_options(estate, plan, failover, failover_plan))


def resource_delta(
    old_estate: Estate, new_estate: Estate, *, old_plan: StackPlan | None = None, new_plan: StackPlan | None = None
) -> dict[str, Any]:
    """Resources added, removed and changed (key properties) from one spec to the next, JSON-able.

    Both specs run without failover, under the same stack name, so URNs compare one to one.
    """
    old = {r.urn: r for r in preview(old_estate, old_plan).resources if r.type != "pulumi:pulumi:Stack"}
    new = {r.urn: r for r in preview(new_estate, new_plan).resources if r.type != "pulumi:pulumi:Stack"}

    def brief(r: Declaration) -> dict[str, Any]:
        return {"urn": r.urn, "type": r.type, "name": r.name, "properties": r.key_properties}

    changed = []
    for urn in sorted(old.keys() & new.keys()):
        before, after = old[urn].key_properties, new[urn].key_properties
        changes = {
            k: {"old": before.get(k), "new": after.get(k)}
            for k in sorted(before.keys() | after.keys())
            if before.get(k) != after.get(k)
        }
        if changes:
            changed.append({"urn": urn, "type": new[urn].type, "name": new[urn].name, "changes": changes})
    return {
        "added": [brief(new[u]) for u in sorted(new.keys() - old.keys())],
        "removed": [brief(old[u]) for u in sorted(old.keys() - new.keys())],
        "changed": changed,
    }


# ---------------------------------------------------------------------------------------------
# Rendering.


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def render_text(result: Preview) -> str:
    children: dict[str | None, list[Declaration]] = {}
    for r in result.resources:
        children.setdefault(r.parent, []).append(r)
    stack = [r for r in result.resources if r.type == "pulumi:pulumi:Stack"]
    roots = children.get(stack[0].urn, []) if stack else children.get(None, [])
    lines = [
        f"estate {result.estate}: {len(result.cloud())} Azure resources, failover "
        f"{result.failover}" + (f" (plan {result.failover_plan})" if result.failover_plan else "")
    ]

    def walk(node: Declaration, prefix: str, last: bool) -> None:
        branch = "└── " if last else "├── "
        props = node.key_properties
        rules = props.pop("rules", [])
        detail = "  ".join(f"{k}={_short(v)}" for k, v in props.items())
        lines.append(f"{prefix}{branch}{node.type}  {node.name}" + (f"  {detail}" if detail else ""))
        extension = prefix + ("    " if last else "│   ")
        kids = children.get(node.urn, [])
        for rule in rules:
            lines.append(f"{extension}{'│ ' if kids else '  '} rule: {rule}")
        for i, kid in enumerate(kids):
            walk(kid, extension, i == len(kids) - 1)

    for i, root in enumerate(roots):
        walk(root, "", i == len(roots) - 1)
    lines.append("")
    lines.append("counts: " + ", ".join(f"{t.split(':', 1)[-1]} {n}" for t, n in result.counts().items()))
    return "\n".join(lines)


def render_markdown(result: Preview) -> str:
    names = {r.urn: r.name for r in result.resources}
    lines = [
        f"### Azure resources of `{result.estate}` (failover: {result.failover}"
        + (f", plan `{result.failover_plan}`" if result.failover_plan else "")
        + ")",
        "",
        "| Type | Name | Parent | Key properties |",
        "|---|---|---|---|",
    ]
    for r in result.resources:
        if r.type == "pulumi:pulumi:Stack":
            continue
        parent = names.get(r.parent or "", "")
        props = "<br>".join(f"{k}: {_short(v)}" for k, v in r.key_properties.items()).replace("|", "\\|")
        lines.append(f"| `{r.type}` | {r.name} | {parent} | {props} |")
    lines += ["", "| Type | Count |", "|---|---|"]
    lines += [f"| `{t}` | {n} |" for t, n in result.counts().items()]
    return "\n".join(lines)
