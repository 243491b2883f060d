"""`declare(estate, plan, options)`: the whole Azure side of a DR estate, one Pulumi program.

Both `stacks/azure/__main__.py` (real `pulumi up`) and `dr preview` (Pulumi's mock runtime) call
it. The spec is validated and the stack options are checked before the first resource.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_azure_native import authorization, resources

from dr.azure import bootstrap, naming
from dr.azure.components import (
    RETENTION_DISK_GB,
    ConfigurationServer,
    KeyVault,
    MasterTargetServer,
    Network,
    PackageStore,
    RecoverySite,
    ServerNet,
    StorageTier,
    Target,
)
from dr.azure.contract import StackPlan, from_contract
from dr.azure.options import StackOptions, check, check_spec, failover_plan_name
from dr.model import Estate


@dataclass(frozen=True)
class Declared:
    """What `declare` built: the root component and the stack outputs to export."""

    root: pulumi.ComponentResource
    outputs: dict[str, Any]


def _free_addresses(estate: Estate) -> Iterator[str]:
    """Static addresses for the always-on servers: the recovery subnet's first usable addresses,
    skipping Azure's reserved four and every source machine's own address (kept at failover)."""
    subnet = ipaddress.ip_network(estate.azure.network.subnet_prefix)
    taken = {m.address for m in estate.machines if m.address}
    for index, address in enumerate(subnet.hosts()):
        if index + 1 < 4:  # hosts() starts at .1; .1-.3 are Azure's
            continue
        if str(address) not in taken:
            yield str(address)


class DrEstate(pulumi.ComponentResource):
    def __init__(self, name: str, *, estate: Estate, plan: StackPlan, options: StackOptions) -> None:
        super().__init__("dr:azure:Estate", name, None, None)
        azure = estate.azure
        child = pulumi.ResourceOptions(parent=self)
        client = authorization.get_client_config_output(opts=pulumi.InvokeOptions(parent=self))
        base_tags = {"dr-estate": estate.estate, "managed-by": "dr"}
        if azure.network.existing:
            found = resources.get_resource_group_output(
                resource_group_name=azure.resource_group, opts=pulumi.InvokeOptions(parent=self)
            )
            rg_name: pulumi.Input[str] = found.name
        else:
            rg = resources.ResourceGroup(
                f"{name}-rg",
                resource_group_name=azure.resource_group,
                location=azure.region,
                tags={**base_tags, "dr-role": "estate"},
                opts=child,
            )
            rg_name = rg.name
        target = Target(
            estate=estate,
            resource_group_name=rg_name,
            subscription_id=client.subscription_id,
            tenant_id=client.tenant_id,
            scope=naming.Scope(naming.subscription_key(azure.subscription), options.stack),
            deployer_id=client.object_id,
            key_vault_recover=options.key_vault_recover,
            tags=base_tags,
        )

        net = Network(f"{name}-network", target=target, opts=child)
        tier = StorageTier(f"{name}-storage", target=target, accounts=plan.storage_accounts, opts=child)
        kv = KeyVault(
            f"{name}-keyvault",
            target=target,
            passphrase=options.registration_passphrase,
            admin_password=options.admin_password,
            extra_secrets={bootstrap.storage_secret(a): c for a, c in tier.connection_strings.items()},
            opts=child,
        )

        addresses = _free_addresses(estate)
        cs_addresses = {cs.name: next(addresses) for cs in plan.config_servers}
        first_cs = plan.config_servers[0].name if plan.config_servers else None
        registration = bootstrap.Registration(
            configuration_server=f"https://{cs_addresses[first_cs]}:{bootstrap.CONTROL_PORT}" if first_cs else "",
            passphrase_secret_uri=bootstrap.passphrase_secret_uri(kv.vault_name),
        )
        # The estate's own wheels, in a private container of its first retention account (else its first).
        store_account = next((a for a in plan.storage_accounts if a.purpose == "retention"), plan.storage_accounts[0])
        store_name = naming.storage_account_name(estate.estate, store_account.name)
        packages = PackageStore(
            f"{name}-packages", target=target, account=tier.accounts[store_account.name], houses=options.packages,
            opts=child,
        )

        def packages_of(target_os: str, role: str) -> bootstrap.Packages:
            return bootstrap.packages_for(options.packages, store_name, target_os, role, options.package_version)

        servers: dict[str, Any] = {}
        for cs in plan.config_servers:
            server = ConfigurationServer(
                f"{name}-{naming.short_name(estate.estate, cs.name)}",
                target=target,
                server=cs,
                net=ServerNet(net.subnet_id, net.control_nsg.id, cs_addresses[cs.name]),
                key_vault=kv.vault,
                packages=packages,
                custom_data=bootstrap.render_config_server(
                    estate, cs.name, registration, packages_of("linux", "configuration-server")
                ),
                admin_user=options.admin_user,
                ssh_public_key=options.ssh_public_key,
                opts=child,
            )
            servers[cs.name] = {"private_ip": server.private_ip, "public_ip": server.public_ip}
        master_targets: dict[str, Any] = {}
        data_path = bootstrap.data_path_configs(estate) if plan.master_targets else {}
        for mts in plan.master_targets:
            used = sorted({plan.account_of_disk(m, d.name).name for m in mts.machines for d in estate.machine(m).disks})
            retention = plan.retention_account_of(mts.name)
            if retention is not None:
                used.append(retention.name)
            address = next(addresses)
            server_mts = MasterTargetServer(
                f"{name}-{naming.short_name(estate.estate, mts.name)}",
                target=target,
                mts=mts,
                net=ServerNet(net.subnet_id, net.data_nsg.id, address),
                accounts=tier.accounts,
                account_names=used,
                key_vault=kv.vault,
                packages=packages,
                custom_data=bootstrap.render_master_target(
                    estate, plan, mts, registration, data_path, packages_of(mts.os, "master-target"), address
                ),
                admin_user=options.admin_user,
                ssh_public_key=options.ssh_public_key,
                admin_password=options.admin_password,
                retention_gb=RETENTION_DISK_GB,
                opts=child,
            )
            master_targets[mts.name] = {"private_ip": server_mts.private_ip, "public_ip": server_mts.public_ip}

        requested = failover_plan_name(estate, options)
        failover_vms = {vm.machine: vm for vm in plan.failover_vms}
        sites: dict[str, Any] = {}
        for rp in estate.recovery_plans:
            kind = options.failover if rp.name == requested else "none"
            disk_sources: dict[str, list[tuple[str, pulumi.Input[str]]]] = {}
            if kind != "none":
                # The chosen recovery point, as `dr failover` materialised it (never the live replica).
                group_name = (naming.test_failover_resource_group if kind == "test" else
                              naming.failover_resource_group)(azure.resource_group, rp.name)
                recovered = tier.accounts[store_account.name].id
                for group in rp.groups:
                    for m in group.machines:
                        disk_sources[m] = [
                            (naming.recovered_disk_url(store_name, group_name, m, disk.name), recovered)
                            for disk in estate.machine(m).disks
                        ]
            site = RecoverySite(
                f"{name}-{rp.name}",
                target=target,
                plan=rp,
                failover=kind,
                failover_vms=failover_vms,
                disk_sources=disk_sources,
                subnet_id=net.subnet_id,
                nsg_id=net.recovery_nsg.id,
                opts=child,
            )
            sites[rp.name] = {"resource_group": site.resource_group.name, "failover": kind, "machines": site.machines}
        self.outputs: dict[str, Any] = {
            "resource_group": rg_name,
            "key_vault": kv.vault_name,
            "storage_accounts": {a: naming.storage_account_name(estate.estate, a) for a in tier.accounts},
            "configuration_servers": servers,
            "master_targets": master_targets,
            "recovery_plans": sites,
            "replica_layout": f"{naming.REPLICA_CONTAINER}/<machine>-<disk>.vhd",
            # where `dr failover` must put the recovery disks (its --storage: this account's connection string)
            "recovered_disks": {
                "account": store_name,
                "container": "<the recovery resource group's name>",
                "blob": naming.recovered_disk_blob("<machine>", "<disk>"),
            },
        }
        self.register_outputs(self.outputs)


def declare(estate: Estate, plan: StackPlan | Any, options: StackOptions) -> Declared:
    """Declare every Azure resource of the estate. Raises StackInvalid / PlanUnusable before any.

    `plan` is the planner's `dr.plan.Plan` or its contract view `StackPlan`.
    """
    if not isinstance(plan, StackPlan):
        plan = from_contract(plan.model_dump(mode="json"))
    check_spec(estate)
    check(estate, plan, options)
    root = DrEstate(estate.estate, estate=estate, plan=plan, options=options)
    return Declared(root=root, outputs=root.outputs)
