"""One `pulumi.ComponentResource` per DR concept; every child parented, outputs registered.

    dr:azure:Estate                 the whole estate (resource group, and everything below)
    ├── dr:azure:Network            recovery VNet + subnet (or the existing ones), the NSGs
    ├── dr:azure:KeyVault           Key Vault holding the registration passphrase (and admin password)
    ├── dr:azure:StorageTier        the plan's geo-redundant storage accounts and private containers
    ├── dr:azure:PackageStore       the estate's own wheels (and their dependencies), by hash, private
    ├── dr:azure:ConfigurationServer  one per plan config server: identity + grants, NIC, VM
    ├── dr:azure:MasterTarget       one per plan MTS: identity + grants, NIC, retention disk, VM
    └── dr:azure:RecoverySite       one per recovery plan: its failover resource group, and
        ├── dr:azure:TrafficManager     priority routing: on-premises 1, Azure 2
        ├── dr:azure:IsolatedNetwork    (test failover) a VNet with the same address space, no route out
        └── dr:azure:RecoveryVm         (failover requested) managed disks imported from the chosen recovery
                                        point (materialised by `dr failover`), NICs, VM

No Recovery Services vault: dr does not use Azure Site Recovery (its own data path replicates into
the estate's storage accounts, and its configuration server is the registration root), so a vault
would stand empty in the portal.

Opened ports (the only inbound allow rules; everything else is Azure's default deny from the
Internet): see `OPENED_PORTS`. The components never size anything: sizes come from the plan.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi_azure_native import (
    authorization,
    compute,
    keyvault,
    managedidentity,
    network,
    storage,
    trafficmanager,
)

from dr.azure import naming
from dr.azure.bootstrap import (
    ADMIN_PASSWORD_SECRET,
    CONTROL_PORT,
    DATA_PORT,
    PACKAGES_CONTAINER,
    PASSPHRASE_SECRET,
    RETENTION_LUN,
)
from dr.azure.contract import ConfigServer, FailoverVm, MasterTarget, StorageAccount
from dr.azure.options import CONTROL_PORT_ROLE, DATA_PORT_ROLE, GEO_REDUNDANT, primary_site_sources
from dr.model import Estate, Machine, RecoveryPlan

# Every inbound port the stack opens, and why (the tests refuse any other allow rule).
OPENED_PORTS: Mapping[int, str] = {
    CONTROL_PORT: "control: agents and process servers register with and report to the configuration server (HTTPS)",
    DATA_PORT: "data: process servers stream replication to the master targets (TLS, mutual authentication)",
}
# Built-in Azure role definitions (learn.microsoft.com, "Azure built-in roles").
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
# Marketplace images. Linux: Ubuntu 24.04 LTS (Generation 2), whose python3 is 3.12 (dr needs 3.11+);
# every size of the current profile boots Generation 2 (dr/data/vm_sizes.yaml).
LINUX_IMAGE = {
    "publisher": "Canonical",
    "offer": "ubuntu-24_04-lts",
    "sku": "server",
    "version": "latest",
}
WINDOWS_IMAGE = {
    "publisher": "MicrosoftWindowsServer",
    "offer": "WindowsServer",
    "sku": "2022-datacenter",
    "version": "latest",
}
# Retention disk of a master target when the plan does not state `retention_gb`: 1023 GB, the
# largest data disk of the seed's era (Azure's 2015 VHD limit), so retention uses all it may.
RETENTION_DISK_GB = 1023
# Disk SKUs: the seed's replicas live in standard storage, so failed-over disks are standard too.
RECOVERY_DISK_SKU = "Standard_LRS"
SERVER_OS_DISK_SKU = "StandardSSD_LRS"
TEST_ISOLATION_RULE = "deny-internet-outbound"
# Azure reserves the first four addresses of every subnet (.0 network, .1 gateway, .2-.3 DNS).
AZURE_RESERVED_FIRST = 4


@dataclass(frozen=True)
class Target:
    """What every component needs from the estate: regions, resource group, base tags."""

    estate: Estate
    resource_group_name: pulumi.Input[str]
    subscription_id: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    scope: naming.Scope  # subscription + stack: mixed into global names and role-assignment GUIDs
    deployer_id: pulumi.Input[str] = ""  # object id of whoever runs `pulumi up` (client config)
    key_vault_recover: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def region(self) -> str:
        return self.estate.azure.region

    @property
    def storage_region(self) -> str:
        return self.estate.azure.storage_region or self.estate.azure.region

    def tagged(self, **extra: str) -> dict[str, str]:
        tags = dict(self.tags)
        tags.update({k.replace("_", "-"): v for k, v in extra.items() if v})
        return tags

    def groups_of(self, machines: Sequence[str]) -> str:
        names = sorted({g.name for m in machines if (g := self.estate.group_of(m)) is not None})
        return ",".join(names)[:256]  # Azure tag values hold at most 256 characters


def bootstrap_digest(custom_data: str) -> str:
    """12 hex of the SHA-256 of the custom data the spec renders now, tagged on the VM, so a review
    sees when it changes even when a secret hides the whole os profile. Custom data runs at first
    boot only, so the stack ignores later changes to it (`ignore_changes`): a running configuration
    server keeps its state instead of being replaced; the tag then tells the bootstrap has moved on."""
    return hashlib.sha256(custom_data.encode()).hexdigest()[:12]


def _child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kwargs)


def _role_id(target: Target, role: str) -> pulumi.Output[str]:
    return pulumi.Output.concat(
        "/subscriptions/", target.subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role
    )


def _grant(
    owner: pulumi.Resource,
    name: str,
    *,
    target: Target,
    principal_id: pulumi.Input[str],
    scope: pulumi.Input[str],
    role: str,
    principal_type: str | None = "ServicePrincipal",
    opts: Mapping[str, Any] | None = None,
) -> authorization.RoleAssignment:
    # The assignment name must be a GUID; derive it (subscription and stack included) so a re-run
    # declares the same one and another deployment of the same spec a different one.
    return authorization.RoleAssignment(
        name,
        role_assignment_name=naming.role_assignment_id(target.scope, target.estate.estate, name, role),
        principal_id=principal_id,
        principal_type=principal_type,
        role_definition_id=_role_id(target, role),
        scope=scope,
        opts=_child(owner, **(opts or {})),
    )


def _inbound_rules(target: Target, port: int) -> list[network.SecurityRuleArgs]:
    """Allow `port` from the primary site only (`primary_site_sources`); over VPN/ExpressRoute
    everything else from those sources is then denied (Azure's default rule would let it all in)."""
    azure = target.estate.azure
    sources = primary_site_sources(target.estate, CONTROL_PORT_ROLE if port == CONTROL_PORT else DATA_PORT_ROLE)
    rules = [
        network.SecurityRuleArgs(
            name=f"allow-{port}-from-primary-site",
            description=OPENED_PORTS[port],
            priority=100,
            direction="Inbound",
            access="Allow",
            protocol="Tcp",
            source_address_prefixes=sources,
            source_port_range="*",
            destination_address_prefix="*",
            destination_port_range=str(port),
        )
    ]
    if azure.connectivity != "internet":
        rules.append(
            network.SecurityRuleArgs(
                name="deny-other-from-primary-site",
                description="the primary site reaches this server on the port above only",
                priority=4000,
                direction="Inbound",
                access="Deny",
                protocol="*",
                source_address_prefixes=sources,
                source_port_range="*",
                destination_address_prefix="*",
                destination_port_range="*",
            )
        )
    return rules


class Network(pulumi.ComponentResource):
    """The recovery VNet and subnet (declared, or looked up when `existing: true`) and the NSGs:
    `control` (configuration server, 443), `data` (master targets, 9444), `recovery` (failed-over
    machines: Azure's defaults only)."""

    subnet_id: pulumi.Output[str]

    def __init__(self, name: str, *, target: Target, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dr:azure:Network", name, None, opts)
        spec = target.estate.azure.network
        if spec.existing:
            found = network.get_subnet_output(
                resource_group_name=target.resource_group_name,
                virtual_network_name=spec.vnet,
                subnet_name=spec.subnet,
                opts=pulumi.InvokeOptions(parent=self),
            )
            self.subnet_id = found.id.apply(lambda i: i or "")
        else:
            vnet = network.VirtualNetwork(
                f"{name}-vnet",
                virtual_network_name=spec.vnet,
                resource_group_name=target.resource_group_name,
                location=target.region,
                address_space=network.AddressSpaceArgs(address_prefixes=[spec.address_space]),
                tags=target.tagged(dr_role="recovery-network"),
                opts=_child(self),
            )
            subnet = network.Subnet(
                f"{name}-subnet",
                subnet_name=spec.subnet,
                virtual_network_name=vnet.name,
                resource_group_name=target.resource_group_name,
                address_prefix=spec.subnet_prefix,
                opts=_child(self),
            )
            self.subnet_id = subnet.id
        self.control_nsg = self._nsg(f"{name}-control", target, _inbound_rules(target, CONTROL_PORT), "control")
        self.data_nsg = self._nsg(f"{name}-data", target, _inbound_rules(target, DATA_PORT), "data")
        self.recovery_nsg = self._nsg(f"{name}-recovery", target, [], "recovery")
        self.register_outputs(
            {
                "subnet_id": self.subnet_id,
                "control_nsg": self.control_nsg.id,
                "data_nsg": self.data_nsg.id,
                "recovery_nsg": self.recovery_nsg.id,
            }
        )

    def _nsg(
        self, name: str, target: Target, rules: list[network.SecurityRuleArgs], role: str
    ) -> network.NetworkSecurityGroup:
        return network.NetworkSecurityGroup(
            name,
            network_security_group_name=f"{target.estate.estate}-{role}-nsg",
            resource_group_name=target.resource_group_name,
            location=target.region,
            security_rules=rules,
            tags=target.tagged(dr_role=f"{role}-nsg"),
            opts=_child(self),
        )


class KeyVault(pulumi.ComponentResource):
    """The estate's Key Vault (RBAC authorization, soft delete) and its secrets; servers read them
    with their managed identity, so no secret is ever in custom data or plain config."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        passphrase: pulumi.Input[str],
        admin_password: pulumi.Input[str] | None,
        extra_secrets: Mapping[str, pulumi.Input[str]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:KeyVault", name, None, opts)
        self.vault_name = naming.key_vault_name(target.estate.estate, target.estate.azure.resource_group, target.scope)
        self.vault = keyvault.Vault(
            f"{name}-vault",
            vault_name=self.vault_name,
            resource_group_name=target.resource_group_name,
            location=target.region,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=target.tenant_id,
                sku=keyvault.SkuArgs(family="A", name=keyvault.SkuName.STANDARD),
                enable_rbac_authorization=True,
                enable_soft_delete=True,
                soft_delete_retention_in_days=90,
                # No purge protection, so a destroyed estate's vault can be purged; `dr:keyVaultRecover`
                # brings back the soft-deleted vault of an earlier destroy of this stack instead.
                create_mode=keyvault.CreateMode.RECOVER if target.key_vault_recover else None,
            ),
            tags=target.tagged(dr_role="secrets"),
            opts=_child(self),
        )
        # Whoever deploys may delete the secrets again (`pulumi destroy`): a data-plane role that
        # Owner/Contributor do not carry on an RBAC vault. The secrets depend on it, so destroy
        # deletes them before the grant.
        deployer = _grant(
            self,
            f"{name}-deployer-secrets",
            target=target,
            principal_id=target.deployer_id,
            scope=self.vault.id,
            role=ROLE_KEY_VAULT_SECRETS_OFFICER,
            principal_type=None,
        )
        secrets = {PASSPHRASE_SECRET: passphrase}
        if admin_password is not None:
            secrets[ADMIN_PASSWORD_SECRET] = admin_password
        secrets.update(extra_secrets or {})
        for secret_name, value in secrets.items():
            keyvault.Secret(
                f"{name}-{secret_name}",
                secret_name=secret_name,
                vault_name=self.vault.name,
                resource_group_name=target.resource_group_name,
                properties=keyvault.SecretPropertiesArgs(value=pulumi.Output.secret(value)),
                tags=target.tagged(dr_role="secret"),
                opts=_child(self, depends_on=[deployer]),
            )
        self.register_outputs({"vault_id": self.vault.id, "vault_name": self.vault.name})


class StorageTier(pulumi.ComponentResource):
    """The plan's storage accounts: geo-redundant, no anonymous blob access, HTTPS and TLS 1.2 only;
    a private `replica` container (page-blob VHDs) or `retention` container (recovery-point journal)."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        accounts: Sequence[StorageAccount],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:StorageTier", name, None, opts)
        sku = GEO_REDUNDANT[target.estate.azure.storage_redundancy]
        self.accounts: dict[str, storage.StorageAccount] = {}
        # Azure account name -> connection string (a secret): the master target's replica writes.
        self.connection_strings: dict[str, pulumi.Output[str]] = {}
        for account in accounts:
            machines = [d.split("/", 1)[0] for d in account.disks]
            created = storage.StorageAccount(
                f"{name}-{account.name}",
                account_name=naming.storage_account_name(target.estate.estate, account.name),
                resource_group_name=target.resource_group_name,
                location=target.storage_region,
                kind="StorageV2",
                sku=storage.SkuArgs(name=sku),
                access_tier=storage.AccessTier.HOT,
                allow_blob_public_access=False,
                minimum_tls_version="TLS1_2",
                enable_https_traffic_only=True,
                tags=target.tagged(
                    dr_role=account.purpose,
                    dr_plan_account=account.name,
                    dr_protection_group=target.groups_of(machines),
                ),
                opts=_child(self),
            )
            storage.BlobContainer(
                f"{name}-{account.name}-{account.purpose}",
                container_name=naming.REPLICA_CONTAINER if account.purpose == "replica" else naming.RETENTION_CONTAINER,
                account_name=created.name,
                resource_group_name=target.resource_group_name,
                public_access=storage.PublicAccess.NONE,
                opts=_child(self),
            )
            self.accounts[account.name] = created
            if account.purpose == "replica":
                keys = storage.list_storage_account_keys_output(
                    resource_group_name=target.resource_group_name,
                    account_name=created.name,
                    opts=pulumi.InvokeOptions(parent=self),
                )
                self.connection_strings[naming.storage_account_name(target.estate.estate, account.name)] = (
                    pulumi.Output.secret(
                        pulumi.Output.concat(
                            "DefaultEndpointsProtocol=https;AccountName=",
                            created.name,
                            ";AccountKey=",
                            keys.keys[0].value,
                            ";EndpointSuffix=core.windows.net",
                        )
                    )
                )
        self.register_outputs({name: acct.name for name, acct in self.accounts.items()})


@dataclass(frozen=True)
class ServerNet:
    """Where an always-on server sits: subnet, NSG, static private address."""

    subnet_id: pulumi.Input[str]
    nsg_id: pulumi.Input[str]
    private_ip: str


def _server_nic(
    owner: pulumi.ComponentResource, name: str, target: Target, net: ServerNet, role: str
) -> tuple[network.NetworkInterface, network.PublicIPAddress | None]:
    public: network.PublicIPAddress | None = None
    if target.estate.azure.connectivity == "internet":
        # The process servers dial this address from the internet; the NSG admits them only.
        public = network.PublicIPAddress(
            f"{name}-pip",
            public_ip_address_name=f"{name}-pip",
            resource_group_name=target.resource_group_name,
            location=target.region,
            sku=network.PublicIPAddressSkuArgs(name="Standard"),
            public_ip_allocation_method="Static",
            tags=target.tagged(dr_role=role),
            opts=_child(owner),
        )
    nic = network.NetworkInterface(
        f"{name}-nic",
        network_interface_name=f"{name}-nic",
        resource_group_name=target.resource_group_name,
        location=target.region,
        network_security_group=network.NetworkSecurityGroupArgs(id=net.nsg_id),
        ip_configurations=[
            network.NetworkInterfaceIPConfigurationArgs(
                name="primary",
                primary=True,
                subnet=network.SubnetArgs(id=net.subnet_id),
                private_ip_allocation_method="Static",
                private_ip_address=net.private_ip,
                public_ip_address=network.PublicIPAddressArgs(id=public.id) if public is not None else None,
            )
        ],
        tags=target.tagged(dr_role=role),
        opts=_child(owner),
    )
    return nic, public


def _os_profile(
    name: str,
    target: Target,
    *,
    windows: bool,
    admin_user: str,
    ssh_public_key: str,
    admin_password: pulumi.Input[str] | None,
    custom_data: str,
) -> compute.OSProfileArgs:
    import base64

    encoded = base64.b64encode(custom_data.encode()).decode()
    if windows:
        return compute.OSProfileArgs(
            computer_name=naming.computer_name(naming.short_name(target.estate.estate, name), windows=True),
            admin_username=admin_user,
            admin_password=pulumi.Output.secret(admin_password) if admin_password is not None else None,
            custom_data=encoded,
            windows_configuration=compute.WindowsConfigurationArgs(provision_vm_agent=True),
        )
    return compute.OSProfileArgs(
        computer_name=naming.computer_name(name, windows=False),
        admin_username=admin_user,
        custom_data=encoded,
        linux_configuration=compute.LinuxConfigurationArgs(
            disable_password_authentication=True,
            ssh=compute.SshConfigurationArgs(
                public_keys=[
                    compute.SshPublicKeyArgs(
                        path=f"/home/{admin_user}/.ssh/authorized_keys",
                        key_data=ssh_public_key,
                    )
                ]
            ),
        ),
    )


def _image(windows: bool) -> compute.ImageReferenceArgs:
    return compute.ImageReferenceArgs(**(WINDOWS_IMAGE if windows else LINUX_IMAGE))


def _server_identity(
    owner: pulumi.ComponentResource,
    name: str,
    target: Target,
    role: str,
    grants: Sequence[tuple[str, pulumi.Input[str], str]],
) -> tuple[managedidentity.UserAssignedIdentity, list[pulumi.Resource]]:
    """A server's user-assigned identity and its role assignments (name suffix, scope, role), declared
    before the VM so the VM depends on them: the first boot then finds its rights in place (Azure
    may still take minutes to apply them; the bootstrap waits that out)."""
    identity = managedidentity.UserAssignedIdentity(
        f"{name}-identity",
        resource_name_=f"{name}-id",
        resource_group_name=target.resource_group_name,
        location=target.region,
        tags=target.tagged(dr_role=f"{role}-identity"),
        opts=_child(owner),
    )
    assignments: list[pulumi.Resource] = [
        _grant(owner, f"{name}-{suffix}", target=target, principal_id=identity.principal_id, scope=scope, role=role_id)
        for suffix, scope, role_id in grants
    ]
    return identity, assignments


class PackageStore(pulumi.ComponentResource):
    """The estate's own wheels (`dr.azure.wheels`: built from the checkout, dependency wheels for the
    servers' platforms, each with its SHA-256) in a private container `packages` of one of the
    estate's storage accounts. The servers download them with their identity and install them by
    hash; nothing comes from a public index."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        account: storage.StorageAccount,
        houses: Sequence[Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:PackageStore", name, None, opts)
        self.account = account
        container = storage.BlobContainer(
            f"{name}-container",
            container_name=PACKAGES_CONTAINER,
            account_name=account.name,
            resource_group_name=target.resource_group_name,
            public_access=storage.PublicAccess.NONE,
            opts=_child(self),
        )
        self.blobs: list[pulumi.Resource] = [container]
        for house in houses:
            for wheel in house.wheels:
                self.blobs.append(
                    storage.Blob(
                        f"{name}-{house.target}-{house.role}-{wheel.name}",
                        blob_name=f"{house.target}/{house.role}/{wheel.name}",
                        container_name=container.name,
                        account_name=account.name,
                        resource_group_name=target.resource_group_name,
                        type=storage.BlobType.BLOCK,
                        content_type="application/zip",
                        metadata={"sha256": wheel.sha256},
                        source=pulumi.FileAsset(str(wheel.path)),
                        opts=_child(self),
                    )
                )
        self.register_outputs({"container": container.name, "wheels": len(self.blobs) - 1})


class ConfigurationServer(pulumi.ComponentResource):
    """The configuration server VM (Linux, size from the plan) running `dr config-server`, with its
    identity (read the Key Vault secrets, read the packages) declared first."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        server: ConfigServer,
        net: ServerNet,
        key_vault: keyvault.Vault,
        packages: PackageStore,
        custom_data: str,
        admin_user: str,
        ssh_public_key: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:ConfigurationServer", name, None, opts)
        nic, public = _server_nic(self, name, target, net, "configuration-server")
        self.identity, grants = _server_identity(self, name, target, "configuration-server", [
            ("kv-secrets", key_vault.id, ROLE_KEY_VAULT_SECRETS_USER),
            ("packages", packages.account.id, ROLE_STORAGE_BLOB_DATA_READER),
        ])
        self.vm = _server_vm(
            self, name, target, size=server.size, windows=False, nic=nic, admin_user=admin_user,
            ssh_public_key=ssh_public_key, admin_password=None, custom_data=custom_data,
            tags=target.tagged(dr_role="configuration-server", dr_bootstrap=bootstrap_digest(custom_data)),
            identity=self.identity, depends_on=[*grants, *packages.blobs],
        )
        self.private_ip = net.private_ip
        self.public_ip = public.ip_address if public is not None else None
        self.register_outputs({"vm_id": self.vm.id, "private_ip": self.private_ip, "public_ip": self.public_ip})


def _server_vm(
    parent: pulumi.Resource,
    name: str,
    target: Target,
    *,
    size: str,
    windows: bool,
    nic: network.NetworkInterface,
    admin_user: str,
    ssh_public_key: str,
    admin_password: pulumi.Input[str] | None,
    custom_data: str,
    tags: pulumi.Input[Mapping[str, pulumi.Input[str]]],
    identity: managedidentity.UserAssignedIdentity,
    depends_on: Sequence[pulumi.Resource] = (),
    data_disks: Sequence[compute.DataDiskArgs] = (),
) -> compute.VirtualMachine:
    """A DR server VM (configuration server or master target): its user-assigned identity (whose
    role assignments, and the published wheels, it depends on), the OS image of its kind, a premium
    OS disk, boot diagnostics; custom data bootstraps it once (later edits to it are not a reason to
    replace the VM)."""
    return compute.VirtualMachine(
        f"{name}-vm",
        vm_name=name,
        resource_group_name=target.resource_group_name,
        location=target.region,
        hardware_profile=compute.HardwareProfileArgs(vm_size=size),
        identity=compute.VirtualMachineIdentityArgs(
            type=compute.ResourceIdentityType.USER_ASSIGNED, user_assigned_identities=[identity.id]
        ),
        storage_profile=compute.StorageProfileArgs(
            image_reference=_image(windows),
            os_disk=compute.OSDiskArgs(
                name=f"{name}-os",
                create_option="FromImage",
                caching=compute.CachingTypes.READ_WRITE,
                managed_disk=compute.ManagedDiskParametersArgs(storage_account_type=SERVER_OS_DISK_SKU),
            ),
            data_disks=list(data_disks) or None,
        ),
        os_profile=_os_profile(
            name,
            target,
            windows=windows,
            admin_user=admin_user,
            ssh_public_key=ssh_public_key,
            admin_password=admin_password,
            custom_data=custom_data,
        ),
        network_profile=compute.NetworkProfileArgs(
            network_interfaces=[compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True)]
        ),
        diagnostics_profile=compute.DiagnosticsProfileArgs(boot_diagnostics=compute.BootDiagnosticsArgs(enabled=True)),
        tags=tags,
        opts=_child(parent, ignore_changes=["osProfile.customData"], depends_on=list(depends_on)),
    )


class MasterTargetServer(pulumi.ComponentResource):
    """A master target VM (the plan's size; Windows or Linux image by OS) with its retention disk and
    its identity, declared first: write access to its storage accounts, read access to the Key
    Vault secrets and to the packages."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        mts: MasterTarget,
        net: ServerNet,
        accounts: Mapping[str, storage.StorageAccount],
        account_names: Sequence[str],
        key_vault: keyvault.Vault,
        packages: PackageStore,
        custom_data: str,
        admin_user: str,
        ssh_public_key: str,
        admin_password: pulumi.Input[str] | None,
        retention_gb: int,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:MasterTarget", name, None, opts)
        windows = mts.os == "windows"
        groups = target.groups_of(mts.machines)
        nic, public = _server_nic(self, name, target, net, "master-target")
        grants: list[tuple[str, pulumi.Input[str], str]] = [("kv-secrets", key_vault.id, ROLE_KEY_VAULT_SECRETS_USER)]
        grants += [(f"blob-{account}", accounts[account].id, ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR)
                   for account in account_names]
        if not any(accounts[a] is packages.account for a in account_names):
            grants.append(("packages", packages.account.id, ROLE_STORAGE_BLOB_DATA_READER))
        self.identity, assignments = _server_identity(self, name, target, "master-target", grants)
        retention = compute.Disk(
            f"{name}-retention",
            disk_name=f"{name}-retention",
            resource_group_name=target.resource_group_name,
            location=target.region,
            creation_data=compute.CreationDataArgs(create_option="Empty"),
            disk_size_gb=retention_gb,
            sku=compute.DiskSkuArgs(name=SERVER_OS_DISK_SKU),
            tags=target.tagged(dr_role="retention-disk", dr_protection_group=groups),
            opts=_child(self),
        )
        self.vm = _server_vm(
            self, name, target, size=mts.size, windows=windows, nic=nic, admin_user=admin_user,
            ssh_public_key=ssh_public_key, admin_password=admin_password, custom_data=custom_data,
            tags=target.tagged(
                dr_role="master-target", dr_protection_group=groups, dr_bootstrap=bootstrap_digest(custom_data)
            ),
            identity=self.identity,
            depends_on=[*assignments, *packages.blobs],
            data_disks=[
                compute.DataDiskArgs(
                    lun=RETENTION_LUN,
                    create_option="Attach",
                    caching=compute.CachingTypes.NONE,
                    managed_disk=compute.ManagedDiskParametersArgs(id=retention.id),
                )
            ],
        )
        if windows:
            # Windows does not run custom data by itself: the Custom Script Extension runs it once.
            compute.VirtualMachineExtension(
                f"{name}-bootstrap",
                vm_extension_name="dr-bootstrap",
                vm_name=self.vm.name,
                resource_group_name=target.resource_group_name,
                location=target.region,
                publisher="Microsoft.Compute",
                type="CustomScriptExtension",
                type_handler_version="1.10",
                auto_upgrade_minor_version=True,
                protected_settings={
                    "commandToExecute": (
                        'powershell -ExecutionPolicy Bypass -NoProfile -Command "'
                        "Copy-Item C:\\AzureData\\CustomData.bin C:\\AzureData\\dr-bootstrap.ps1 -Force; "
                        '& C:\\AzureData\\dr-bootstrap.ps1"'
                    )
                },
                tags=target.tagged(dr_role="master-target"),
                opts=_child(self),
            )
        self.private_ip = net.private_ip
        self.public_ip = public.ip_address if public is not None else None
        self.register_outputs(
            {
                "vm_id": self.vm.id,
                "private_ip": self.private_ip,
                "public_ip": self.public_ip,
                "machines": list(mts.machines),
            }
        )


class IsolatedNetwork(pulumi.ComponentResource):
    """A test failover's network: same address space and subnet as production, no peering, no
    gateway, outbound Internet denied, so a test copy cannot talk to production or the world."""

    subnet_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        resource_group_name: pulumi.Input[str],
        plan: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:IsolatedNetwork", name, None, opts)
        spec = target.estate.azure.network
        tags = target.tagged(dr_role="test-failover-network", dr_plan=plan)
        nsg = network.NetworkSecurityGroup(
            f"{name}-nsg",
            network_security_group_name=f"{name}-nsg",
            resource_group_name=resource_group_name,
            location=target.region,
            security_rules=[
                network.SecurityRuleArgs(
                    name=TEST_ISOLATION_RULE,
                    description="a test failover must not reach the internet (isolation)",
                    priority=4000,
                    direction="Outbound",
                    access="Deny",
                    protocol="*",
                    source_address_prefix="*",
                    source_port_range="*",
                    destination_address_prefix="Internet",
                    destination_port_range="*",
                )
            ],
            tags=tags,
            opts=_child(self),
        )
        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            virtual_network_name=spec.test_vnet or f"{spec.vnet}-test",
            resource_group_name=resource_group_name,
            location=target.region,
            address_space=network.AddressSpaceArgs(address_prefixes=[spec.address_space]),
            tags=tags,
            opts=_child(self),
        )
        subnet = network.Subnet(
            f"{name}-subnet",
            subnet_name=spec.subnet,
            virtual_network_name=vnet.name,
            resource_group_name=resource_group_name,
            address_prefix=spec.subnet_prefix,
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
            opts=_child(self),
        )
        self.subnet_id = subnet.id
        self.vnet_id = vnet.id
        self.register_outputs({"vnet_id": vnet.id, "subnet_id": subnet.id})


def _static_ip(machine: Machine, subnet_prefix: str) -> str | None:
    """The source address, kept when it lies in the recovery subnet (ASR keeps IPs the same way)."""
    if machine.address is None:
        return None
    try:
        address = ipaddress.ip_address(machine.address)
    except ValueError:
        return None
    return str(address) if address in ipaddress.ip_network(subnet_prefix) else None


class RecoveryVm(pulumi.ComponentResource):
    """A failed-over machine: managed disks imported from the VHD blobs `dr failover` materialised at
    the chosen recovery point (first disk = OS disk; never the live replica, which replication is
    still writing), one NIC per source NIC in the recovery (or isolated) subnet, a VM of the plan's
    size."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        machine: Machine,
        vm: FailoverVm,
        resource_group_name: pulumi.Input[str],
        subnet_id: pulumi.Input[str],
        nsg_id: pulumi.Input[str],
        disk_sources: Sequence[tuple[str, pulumi.Input[str]]],
        tags: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:RecoveryVm", name, None, opts)
        windows = "windows" in machine.os.lower()
        disks: list[compute.Disk] = []
        for index, (disk, (source_uri, account_id)) in enumerate(zip(machine.disks, disk_sources, strict=True)):
            disks.append(
                compute.Disk(
                    f"{name}-{disk.name}",
                    disk_name=f"{machine.name}-{disk.name}",
                    resource_group_name=resource_group_name,
                    location=target.region,
                    sku=compute.DiskSkuArgs(name=RECOVERY_DISK_SKU),
                    os_type=(compute.OperatingSystemTypes.WINDOWS if windows else compute.OperatingSystemTypes.LINUX)
                    if index == 0
                    else None,
                    hyper_v_generation=("V2" if machine.firmware == "uefi" else "V1") if index == 0 else None,
                    creation_data=compute.CreationDataArgs(
                        create_option="Import",
                        source_uri=source_uri,
                        storage_account_id=account_id,
                    ),
                    tags=dict(tags),
                    opts=_child(self),
                )
            )
        static = _static_ip(machine, target.estate.azure.network.subnet_prefix)
        nics = []
        for n in range(machine.nics):
            nics.append(
                network.NetworkInterface(
                    f"{name}-nic{n}",
                    network_interface_name=f"{machine.name}-nic{n}",
                    resource_group_name=resource_group_name,
                    location=target.region,
                    network_security_group=network.NetworkSecurityGroupArgs(id=nsg_id),
                    ip_configurations=[
                        network.NetworkInterfaceIPConfigurationArgs(
                            name="primary",
                            primary=True,
                            subnet=network.SubnetArgs(id=subnet_id),
                            private_ip_allocation_method="Static" if (n == 0 and static) else "Dynamic",
                            private_ip_address=static if n == 0 else None,
                        )
                    ],
                    tags=dict(tags),
                    opts=_child(self),
                )
            )
        self.vm = compute.VirtualMachine(
            f"{name}-vm",
            vm_name=machine.name,
            resource_group_name=resource_group_name,
            location=target.region,
            hardware_profile=compute.HardwareProfileArgs(vm_size=vm.size),
            storage_profile=compute.StorageProfileArgs(
                os_disk=compute.OSDiskArgs(
                    create_option="Attach",
                    os_type=compute.OperatingSystemTypes.WINDOWS if windows else compute.OperatingSystemTypes.LINUX,
                    managed_disk=compute.ManagedDiskParametersArgs(id=disks[0].id),
                ),
                data_disks=[
                    compute.DataDiskArgs(
                        lun=lun, create_option="Attach", managed_disk=compute.ManagedDiskParametersArgs(id=d.id)
                    )
                    for lun, d in enumerate(disks[1:])
                ],
            ),
            network_profile=compute.NetworkProfileArgs(
                network_interfaces=[
                    compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=(n == 0)) for n, nic in enumerate(nics)
                ]
            ),
            diagnostics_profile=compute.DiagnosticsProfileArgs(
                boot_diagnostics=compute.BootDiagnosticsArgs(enabled=True)
            ),
            tags=dict(tags),
            opts=_child(self),
        )
        self.register_outputs({"vm_id": self.vm.id, "disks": [d.id for d in disks]})


class TrafficManager(pulumi.ComponentResource):
    """Priority routing: the on-premises endpoint first (1), Azure second (2). Without a declared
    `azure_endpoint`, the Azure side is a static public IP with a DNS label that the recovery plan's
    after-action associates with the failed-over front end (nothing listens on it before)."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        plan: RecoveryPlan,
        resource_group_name: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dr:azure:TrafficManager", name, None, opts)
        spec = plan.traffic_manager
        assert spec is not None
        tags = target.tagged(dr_role="traffic-manager", dr_plan=plan.name)
        # `<profile>.trafficmanager.net` is global: the deployment's digest keeps two deployments of
        # one spec apart (point the on-premises CNAME at the `fqdn` output).
        self.relative_name = naming.dns_label(target.scope, spec.profile)
        self.fqdn = f"{self.relative_name}.trafficmanager.net"
        azure_endpoint: trafficmanager.EndpointArgs
        if spec.azure_endpoint is not None:
            azure_endpoint = trafficmanager.EndpointArgs(
                name="azure",
                type="Microsoft.Network/trafficManagerProfiles/externalEndpoints",
                target=spec.azure_endpoint,
                priority=2,
                endpoint_status="Enabled",
            )
        else:
            public = network.PublicIPAddress(
                f"{name}-azure-pip",
                public_ip_address_name=f"{spec.profile}-azure",
                resource_group_name=resource_group_name,
                location=target.region,
                sku=network.PublicIPAddressSkuArgs(name="Standard"),
                public_ip_allocation_method="Static",
                dns_settings=network.PublicIPAddressDnsSettingsArgs(
                    domain_name_label=naming.dns_label(target.scope, target.estate.estate, plan.name)
                ),
                tags=tags,
                opts=_child(self),
            )
            azure_endpoint = trafficmanager.EndpointArgs(
                name="azure",
                type="Microsoft.Network/trafficManagerProfiles/azureEndpoints",
                target_resource_id=public.id,
                priority=2,
                endpoint_status="Enabled",
            )
        self.profile = trafficmanager.Profile(
            f"{name}-profile",
            profile_name=spec.profile,
            resource_group_name=resource_group_name,
            location="global",  # Traffic Manager is a global (DNS) service: no region
            profile_status="Enabled",
            traffic_routing_method="Priority",
            dns_config=trafficmanager.DnsConfigArgs(relative_name=self.relative_name, ttl=spec.ttl_seconds),
            monitor_config=trafficmanager.MonitorConfigArgs(protocol="HTTPS", port=443, path="/"),
            endpoints=[
                trafficmanager.EndpointArgs(
                    name="on-premises",
                    type="Microsoft.Network/trafficManagerProfiles/externalEndpoints",
                    target=spec.on_premises_endpoint,
                    priority=1,
                    endpoint_status="Enabled",
                ),
                azure_endpoint,
            ],
            tags=tags,
            opts=_child(self),
        )
        self.register_outputs({"profile_id": self.profile.id, "fqdn": self.fqdn})


class RecoverySite(pulumi.ComponentResource):
    """A recovery plan's side of Azure: its failover resource group (always), its Traffic Manager
    profile, and, when this plan's failover is requested, its recovery VMs (test: isolated network)."""

    def __init__(
        self,
        name: str,
        *,
        target: Target,
        plan: RecoveryPlan,
        failover: str,
        failover_vms: Mapping[str, FailoverVm],
        disk_sources: Mapping[str, Sequence[tuple[str, pulumi.Input[str]]]],
        subnet_id: pulumi.Input[str],
        nsg_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        from pulumi_azure_native import resources

        super().__init__("dr:azure:RecoverySite", name, None, opts)
        rg_name = naming.failover_resource_group(target.estate.azure.resource_group, plan.name)
        self.resource_group = resources.ResourceGroup(
            f"{name}-rg",
            resource_group_name=rg_name,
            location=target.region,
            tags=target.tagged(dr_role="failover-resource-group", dr_plan=plan.name),
            opts=_child(self),
        )
        rg = self.resource_group.name
        if plan.traffic_manager is not None:
            TrafficManager(f"{name}-tm", target=target, plan=plan, resource_group_name=rg, opts=_child(self))
        self.machines: list[str] = []
        if failover != "none":
            vm_group: pulumi.Input[str] = rg
            if failover == "test":
                test_group = resources.ResourceGroup(
                    f"{name}-test-rg",
                    resource_group_name=naming.test_failover_resource_group(
                        target.estate.azure.resource_group, plan.name
                    ),
                    location=target.region,
                    tags=target.tagged(dr_role="test-failover-resource-group", dr_plan=plan.name, dr_failover="test"),
                    opts=_child(self),
                )
                vm_group = test_group.name
                isolated = IsolatedNetwork(
                    f"{name}-test", target=target, resource_group_name=vm_group, plan=plan.name, opts=_child(self)
                )
                subnet_id = isolated.subnet_id
            for group in plan.groups:
                for machine_name in group.machines:
                    machine = target.estate.machine(machine_name)
                    tags = target.tagged(
                        dr_role="recovery-vm",
                        dr_plan=plan.name,
                        dr_failover=failover,
                        dr_protection_group=target.groups_of([machine_name]),
                        dr_plan_group=group.name,
                    )
                    RecoveryVm(
                        f"{name}-{machine_name}",
                        target=target,
                        machine=machine,
                        vm=failover_vms[machine_name],
                        resource_group_name=vm_group,
                        subnet_id=subnet_id,
                        nsg_id=nsg_id,
                        disk_sources=disk_sources[machine_name],
                        tags=tags,
                        opts=_child(self),
                    )
                    self.machines.append(machine_name)
        self.register_outputs({"resource_group": rg, "failover": failover, "machines": self.machines})
