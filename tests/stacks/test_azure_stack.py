"""The Pulumi program under Pulumi's own mock runtime: what it declares equals what the plan decided.

Every run goes through `pulumi.runtime.set_mocks` and `pulumi.runtime.test` (via dr.preview.run or
directly); nothing here needs the Pulumi CLI or Azure.
"""

from __future__ import annotations

import base64
import gzip
import inspect
import json
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.compute as compute
import pulumi_azure_native.keyvault as keyvault
import pulumi_azure_native.managedidentity as managedidentity
import pulumi_azure_native.network as network
import pulumi_azure_native.resources as resources
import pulumi_azure_native.storage as storage
import pulumi_azure_native.trafficmanager as trafficmanager
import pytest
from ruamel.yaml import YAML
from stack_examples import estate_and_plan

from dr.azure import bootstrap, naming, wheels
from dr.azure.components import OPENED_PORTS, TEST_ISOLATION_RULE
from dr.azure.contract import StackPlan
from dr.azure.options import StackInvalid, check
from dr.cli.replica import render_configs
from dr.errors import DrError
from dr.failover.provider import container_name
from dr.model import Estate
from dr.plan import make_plan
from dr.preview import Preview, preview, preview_options, render_markdown, render_text, resource_delta

SDK: dict[str, Any] = {  # type token -> SDK class, to ask the SDK itself which types take tags
    "azure-native:resources:ResourceGroup": resources.ResourceGroup,
    "azure-native:network:VirtualNetwork": network.VirtualNetwork,
    "azure-native:network:Subnet": network.Subnet,
    "azure-native:network:NetworkSecurityGroup": network.NetworkSecurityGroup,
    "azure-native:network:NetworkInterface": network.NetworkInterface,
    "azure-native:network:PublicIPAddress": network.PublicIPAddress,
    "azure-native:storage:StorageAccount": storage.StorageAccount,
    "azure-native:storage:BlobContainer": storage.BlobContainer,
    "azure-native:keyvault:Vault": keyvault.Vault,
    "azure-native:keyvault:Secret": keyvault.Secret,
    "azure-native:compute:VirtualMachine": compute.VirtualMachine,
    "azure-native:compute:Disk": compute.Disk,
    "azure-native:compute:VirtualMachineExtension": compute.VirtualMachineExtension,
    "azure-native:trafficmanager:Profile": trafficmanager.Profile,
    "azure-native:authorization:RoleAssignment": authorization.RoleAssignment,
    "azure-native:managedidentity:UserAssignedIdentity": managedidentity.UserAssignedIdentity,
    "azure-native:storage:Blob": storage.Blob,
}
WIDE_OPEN = {"*", "internet", "any", "0.0.0.0/0", "::/0"}


@cache
def run(name: str, failover: str = "none", plan_name: str | None = None) -> Preview:
    estate, plan = estate_and_plan(name)
    return preview(estate, plan, failover, plan_name)  # type: ignore[arg-type]


def vm_ip(result: Preview, vm_name: str) -> str:
    """The static private address of a server VM (its NIC is `<vm>-nic`)."""
    nic = next(n.inputs for n in result.of_type(":network:NetworkInterface")
               if n.inputs["networkInterfaceName"] == f"{vm_name}-nic")
    return str(nic["ipConfigurations"][0]["privateIPAddress"])


def _vms(result: Preview, role: str) -> list[dict[str, Any]]:
    return [r.inputs for r in result.of_type(":compute:VirtualMachine") if r.inputs["tags"].get("dr-role") == role]


def _failover_plan(estate: Estate) -> str:
    return estate.recovery_plans[0].name


def test_counts_and_sizes_equal_the_plan(example: tuple[str, Estate, StackPlan]) -> None:
    name, estate, plan = example
    result = run(name)
    cs = _vms(result, "configuration-server")
    mts = _vms(result, "master-target")
    assert sorted(v["vmName"] for v in cs) == sorted(c.name for c in plan.config_servers)
    assert sorted((v["vmName"], v["hardwareProfile"]["vmSize"]) for v in mts) == sorted(
        (m.name, m.size) for m in plan.master_targets
    )
    assert {v["vmName"]: v["hardwareProfile"]["vmSize"] for v in cs} == {c.name: c.size for c in plan.config_servers}
    accounts = result.of_type(":storage:StorageAccount")
    assert sorted(a.inputs["accountName"] for a in accounts) == sorted(
        naming.storage_account_name(estate.estate, a.name) for a in plan.storage_accounts
    )
    containers = sorted(c.inputs["containerName"] for c in result.of_type(":storage:BlobContainer"))
    assert containers == sorted(
        [bootstrap.PACKAGES_CONTAINER]
        + [naming.REPLICA_CONTAINER if a.purpose == "replica" else naming.RETENTION_CONTAINER
           for a in plan.storage_accounts]
    )
    # every MTS gets exactly one retention disk, attached at LUN 0
    retention = [d for d in result.of_type(":compute:Disk") if d.inputs["tags"]["dr-role"] == "retention-disk"]
    assert len(retention) == len(plan.master_targets)
    # without a failover, no recovery VM and no imported disk exist
    assert not result.of_type("dr:azure:RecoveryVm")
    assert not [d for d in result.of_type(":compute:Disk") if d.inputs["creationData"]["createOption"] == "Import"]
    # dr does not use Azure Site Recovery: no Recovery Services vault that would stand empty
    assert not [r for r in result.cloud() if "recoveryservices" in r.type]
    assert len(result.of_type("dr:azure:RecoverySite")) == len(estate.recovery_plans)


def test_every_resource_in_the_spec_region(example: tuple[str, Estate, StackPlan]) -> None:
    name, estate, _ = example
    for failover in ("none", "test"):
        result = run(name, failover, _failover_plan(estate))
        for r in result.cloud():
            if "location" not in r.inputs:
                assert "location" not in inspect.signature(SDK[r.type]._internal_init).parameters, r.type
                continue
            expected = {
                "azure-native:storage:StorageAccount": estate.azure.storage_region or estate.azure.region,
                "azure-native:trafficmanager:Profile": "global",  # a DNS service, it has no region
            }.get(r.type, estate.azure.region)
            assert r.inputs["location"] == expected, (r.name, r.inputs["location"])


def test_storage_is_geo_redundant_private_and_tls12(example: tuple[str, Estate, StackPlan]) -> None:
    name, _, _ = example
    result = run(name)
    accounts = result.of_type(":storage:StorageAccount")
    assert accounts
    for a in accounts:
        assert a.inputs["sku"]["name"] in {"Standard_GRS", "Standard_RAGRS", "Standard_GZRS", "Standard_RAGZRS"}
        assert a.inputs["allowBlobPublicAccess"] is False
        assert a.inputs["minimumTlsVersion"] == "TLS1_2"
        assert a.inputs["enableHttpsTrafficOnly"] is True
    for c in result.of_type(":storage:BlobContainer"):
        assert c.inputs["publicAccess"] == "None"


def test_no_rule_opens_anything_beyond_the_documented_ports(example: tuple[str, Estate, StackPlan]) -> None:
    name, estate, _ = example
    for failover in ("none", "test"):
        result = run(name, failover, _failover_plan(estate))
        allowed_ports = set()
        for nsg in result.of_type(":network:NetworkSecurityGroup"):
            for rule in nsg.inputs.get("securityRules", []):
                sources = rule.get("sourceAddressPrefixes") or [rule.get("sourceAddressPrefix")]
                if rule["access"] == "Allow":
                    assert rule["direction"] == "Inbound"
                    assert int(rule["destinationPortRange"]) in OPENED_PORTS, rule
                    assert not {str(s).lower() for s in sources} & WIDE_OPEN, rule
                    assert rule["description"] == OPENED_PORTS[int(rule["destinationPortRange"])]
                    allowed_ports.add(int(rule["destinationPortRange"]))
        assert allowed_ports == set(OPENED_PORTS)
        # no public address at all over VPN/ExpressRoute except Traffic Manager's Azure endpoint
        if estate.azure.connectivity != "internet":
            for pip in result.of_type(":network:PublicIPAddress"):
                assert pip.inputs["tags"]["dr-role"] == "traffic-manager"


def test_every_resource_is_tagged(example: tuple[str, Estate, StackPlan]) -> None:
    name, estate, _ = example
    result = run(name, "test", _failover_plan(estate))
    for r in result.cloud():
        takes_tags = "tags" in inspect.signature(SDK[r.type]._internal_init).parameters
        if not takes_tags:
            assert "tags" not in r.inputs
            continue
        assert r.inputs["tags"]["dr-estate"] == estate.estate, r.name
    for vm in result.of_type("dr:azure:RecoveryVm"):
        kids = [r for r in result.cloud() if r.parent == vm.urn and "tags" in r.inputs]
        assert kids
        for kid in kids:
            assert kid.inputs["tags"]["dr-plan"] == _failover_plan(estate)
            assert kid.inputs["tags"]["dr-protection-group"]
    for account in result.of_type(":storage:StorageAccount"):
        if account.inputs["tags"]["dr-role"] == "replica":
            assert account.inputs["tags"]["dr-protection-group"]


@pytest.mark.parametrize("failover", ["test", "unplanned"])
def test_recovery_vms_only_for_the_requested_plan(example: tuple[str, Estate, StackPlan], failover: str) -> None:
    name, estate, plan = example
    rp = estate.recovery_plans[0]
    result = run(name, failover, rp.name)
    wanted = [m for g in rp.groups for m in g.machines]
    vms = [r.inputs for r in result.of_type(":compute:VirtualMachine") if r.inputs["tags"]["dr-role"] == "recovery-vm"]
    assert sorted(v["vmName"] for v in vms) == sorted(wanted)
    for v in vms:
        assert v["hardwareProfile"]["vmSize"] == plan.failover_vm(v["vmName"]).size
        assert v["storageProfile"]["osDisk"]["createOption"] == "Attach"
        assert v["tags"]["dr-failover"] == failover
    imported = [
        d.inputs for d in result.of_type(":compute:Disk") if d.inputs["creationData"]["createOption"] == "Import"
    ]
    # The chosen point as `dr failover` materialised it (the runner's BlobDiskStore: a container named
    # after the recovery resource group, `<machine>/<disk>.vhd`), never the live replica.
    group_name = (naming.test_failover_resource_group if failover == "test" else naming.failover_resource_group)(
        estate.azure.resource_group, rp.name)
    account = next(a.name for a in plan.storage_accounts if a.purpose == "retention")
    expected = sorted(
        f"https://{naming.storage_account_name(estate.estate, account)}.blob.core.windows.net/"
        f"{container_name(group_name)}/{m}/{d.name}.vhd"
        for m in wanted
        for d in estate.machine(m).disks
    )
    assert sorted(d["creationData"]["sourceUri"] for d in imported) == expected
    assert not [d for d in imported if f"/{naming.REPLICA_CONTAINER}/" in d["creationData"]["sourceUri"]]
    assert all(
        d["creationData"]["storageAccountId"].endswith(d["creationData"]["sourceUri"].split(".")[0][8:])
        for d in imported
    )
    # one failover resource group per recovery plan, and the VMs are in their plan's
    groups = {r.inputs["resourceGroupName"] for r in result.of_type(":resources:ResourceGroup")}
    for other in estate.recovery_plans:
        assert naming.failover_resource_group(estate.azure.resource_group, other.name) in groups
    own = (naming.test_failover_resource_group if failover == "test" else naming.failover_resource_group)(
        estate.azure.resource_group, rp.name
    )
    assert {v["resourceGroupName"] for v in vms} == {own}
    assert own in groups
    quiet = {r.inputs["resourceGroupName"] for r in run(name).of_type(":resources:ResourceGroup")}
    assert not any(g.endswith("-failover-test") for g in quiet)  # only while a test failover runs


def test_test_failover_uses_the_isolated_network(example: tuple[str, Estate, StackPlan]) -> None:
    name, estate, _ = example
    result = run(name, "test", _failover_plan(estate))
    spec = estate.azure.network
    vnets = {r.inputs["virtualNetworkName"]: r.inputs for r in result.of_type(":network:VirtualNetwork")}
    test_name = spec.test_vnet or f"{spec.vnet}-test"
    assert vnets[test_name]["addressSpace"]["addressPrefixes"] == [spec.address_space]
    test_subnets = [s for s in result.of_type(":network:Subnet") if s.inputs["virtualNetworkName"] == test_name]
    assert len(test_subnets) == 1 and test_subnets[0].inputs["addressPrefix"] == spec.subnet_prefix
    isolation = [
        n
        for n in result.of_type(":network:NetworkSecurityGroup")
        if any(r["name"] == TEST_ISOLATION_RULE for r in n.inputs.get("securityRules", []))
    ]
    assert len(isolation) == 1
    recovery_nics = [
        n.inputs for n in result.of_type(":network:NetworkInterface") if n.inputs["tags"]["dr-role"] == "recovery-vm"
    ]
    assert recovery_nics
    for nic in recovery_nics:
        assert f"/virtualNetworks/{test_name}/" in nic["ipConfigurations"][0]["subnet"]["id"] or nic[
            "ipConfigurations"
        ][0]["subnet"]["id"].endswith(f"/{test_subnets[0].inputs['subnetName']}")
        assert f"-{_failover_plan(estate)}-failover" in nic["ipConfigurations"][0]["subnet"]["id"]
    # production failover puts them in the production subnet instead, and declares no test network
    planned = run(name, "planned", _failover_plan(estate))
    assert test_name not in {r.inputs["virtualNetworkName"] for r in planned.of_type(":network:VirtualNetwork")}
    for nic in (
        n.inputs for n in planned.of_type(":network:NetworkInterface") if n.inputs["tags"]["dr-role"] == "recovery-vm"
    ):
        assert f"-{_failover_plan(estate)}-failover" not in nic["ipConfigurations"][0]["subnet"]["id"]


def test_traffic_manager_prefers_on_premises(example: tuple[str, Estate, StackPlan]) -> None:
    name, estate, _ = example
    result = run(name)
    profiles = result.of_type(":trafficmanager:Profile")
    assert len(profiles) == sum(1 for p in estate.recovery_plans if p.traffic_manager)
    for profile in profiles:
        assert profile.inputs["trafficRoutingMethod"] == "Priority"
        endpoints = {e["name"]: e for e in profile.inputs["endpoints"]}
        assert endpoints["on-premises"]["priority"] == 1 and endpoints["azure"]["priority"] == 2


def test_secrets_never_in_clear(example: tuple[str, Estate, StackPlan]) -> None:
    name, _estate, plan = example
    result = run(name)
    for secret in result.of_type(":keyvault:Secret"):
        props = secret.inputs["properties"]  # the secret value makes its whole object secret
        assert props == "[secret]" or props["value"] == "[secret]"
    blob = json.dumps(result.to_json()) + render_text(result) + render_markdown(result)
    assert "preview-placeholder" not in blob
    for vm in result.of_type(":compute:VirtualMachine"):
        profile = vm.inputs.get("osProfile", {})
        if profile == "[secret]":  # a Windows admin password makes the whole profile secret
            assert any(m.os == "windows" for m in plan.master_targets)
            continue
        assert "preview-placeholder" not in base64.b64decode(profile.get("customData", "")).decode()


def test_cloud_init_parses_and_carries_the_registration_values() -> None:
    estate, plan = estate_and_plan("linux-estate")
    result = preview(estate, plan)
    kv = naming.key_vault_name(estate.estate, estate.azure.resource_group,
                               naming.Scope(naming.subscription_key(estate.azure.subscription), "preview"))
    passphrase_uri = f"https://{kv}.vault.azure.net/secrets/registration-passphrase"
    linux = [
        r.inputs for r in result.of_type(":compute:VirtualMachine") if "linuxConfiguration" in r.inputs["osProfile"]
    ]
    assert len(linux) == len(plan.config_servers) + sum(1 for m in plan.master_targets if m.os == "linux")
    data_path = render_configs(estate, make_plan(estate))
    cs_ip = next(
        n.inputs
        for n in result.of_type(":network:NetworkInterface")
        if n.inputs["tags"]["dr-role"] == "configuration-server"
    )["ipConfigurations"][0]["privateIPAddress"]
    for vm in linux:
        text = base64.b64decode(vm["osProfile"]["customData"]).decode()
        assert text.startswith("#cloud-config\n")
        doc = YAML(typ="safe").load(text)
        files = {f["path"]: f for f in doc["write_files"]}
        role = vm["tags"]["dr-role"]
        if role == "master-target":
            config = json.loads(files["/etc/dr/master-target.json"]["content"])
            mts = next(m for m in plan.master_targets if m.name == vm["vmName"])
            assert config["configuration_server"] == f"https://{cs_ip}:{bootstrap.CONTROL_PORT}"
            assert config["machines"] == list(mts.machines)
            assert {d["disk"] for d in config["disks"]} == {
                f"{m}/{d.name}" for m in mts.machines for d in estate.machine(m).disks
            }
            toml = files["/etc/dr-agent/master-target.toml"]["content"]
            # the data path's own config (YAML's `|` keeps one final newline)
            assert toml.rstrip("\n") == data_path[f"{mts.name}/master-target.toml"].rstrip("\n")
            agent = tomllib.loads(toml)["master_target"]
            assert agent["listen"] == f"0.0.0.0:{bootstrap.DATA_PORT}" and agent["storage"] == "azure"
            assert agent["container"] == naming.REPLICA_CONTAINER
            envs = set(agent["disk_connection_string_env"].values())
            assert envs == {naming.storage_env(a) for a in config["storage_accounts"]}
            assert set(agent["disk_connection_string_env"]) == {
                naming.stream_name(m, d.name) for m in mts.machines for d in estate.machine(m).disks
            }
            script = files["/usr/local/lib/dr/bootstrap.py"]["content"]
            compile(script, "bootstrap.py", "exec")  # the first-boot script is valid Python
            boot = json.loads(files["/etc/dr/bootstrap.json"]["content"])
            assert boot["register"] == {"server": f"https://{cs_ip}:{bootstrap.CONTROL_PORT}", "name": mts.name,
                                        "role": "master-target", "out": "/etc/dr-agent/identity",
                                        "addresses": [vm_ip(result, mts.name)]}
            secrets = {s["key"]: s["uri"] for s in boot["secrets"]}
            assert secrets.pop("DR_VAULT_KEY") == passphrase_uri
            assert secrets == {naming.storage_env(a): f"https://{kv}.vault.azure.net/secrets/storage-{a}"
                               for a in config["storage_accounts"]}  # every connection string the TOML names
            assert boot["env_file"] == "/etc/dr-agent/env" and set(boot["env_keys"]) == set(secrets)
            service = files["/etc/systemd/system/dr-master-target.service"]["content"]
            assert service.rstrip("\n") == data_path[f"{mts.name}/dr-master-target.service"].rstrip("\n")
            assert "EnvironmentFile=-/etc/dr-agent/env" in service
        else:
            config = json.loads(files["/etc/dr/config-server.json"]["content"])
            shipped = json.loads(gzip.decompress(base64.b64decode(files["/etc/dr/dr.yaml"]["content"])))
            assert files["/etc/dr/dr.yaml"]["encoding"] == "gz+b64"
            assert Estate.model_validate(shipped) == estate.model_copy(update={"include": []})
            boot = json.loads(files["/etc/dr/bootstrap.json"]["content"])
            assert boot["secrets"] == [{"key": "DR_VAULT_KEY", "uri": passphrase_uri}]
            assert boot["passphrase_file"] == "/etc/dr/registration.passphrase" and "register" not in boot
            service = files["/etc/systemd/system/dr-config-server.service"]["content"]
            assert f"dr config-server start /etc/dr/dr.yaml --listen 0.0.0.0:{bootstrap.CONTROL_PORT}" in service
        assert config["registration"]["passphrase_secret_uri"] == passphrase_uri
        assert config["role"] == role and config["name"] == vm["vmName"]
        # the estate's own wheels from its private container, by hash, never from an index
        assert doc["runcmd"] == [["python3", "/usr/local/lib/dr/bootstrap.py", "/etc/dr/bootstrap.json"]]
        packages = boot["packages"]
        assert packages["base_url"].startswith("https://") and "/packages/linux/" in packages["base_url"]
        assert ".blob.core.windows.net/" in packages["base_url"]
        pins = files["/etc/dr/requirements.txt"]["content"].splitlines()
        assert len(pins) == len(packages["files"]) and all(" --hash=sha256:" in p for p in pins)
        assert all(f.endswith(".whl") for f in packages["files"]) and "pip install" not in text
        assert "preview-placeholder" not in text  # secrets are fetched at boot, never shipped


def test_windows_bootstrap_carries_the_registration_values(tmp_path: Path) -> None:
    estate, plan = estate_and_plan("sharepoint")
    mts = plan.master_targets[0]
    reg = bootstrap.Registration("https://10.50.1.4:8443", bootstrap.passphrase_secret_uri("kv1"))
    files = []
    for name in ("dr_agent-0.1.0-py3-none-any.whl", "zstandard-0.25.0-cp311-cp311-win_amd64.whl"):
        (tmp_path / name).write_bytes(name.encode())
        files.append(wheels.Wheel(tmp_path / name, wheels.digest(tmp_path / name)))
    house = wheels.Wheelhouse("windows", "master-target", tuple(files))
    packages = bootstrap.packages_for([house], "acct1", "windows", "master-target", "0.1.0")
    script = bootstrap.render_master_target(estate, plan, mts, reg, bootstrap.data_path_configs(estate), packages,
                                            "10.50.1.5")
    assert mts.os == "windows"
    start = script.index("$config = @'\n") + len("$config = @'\n")
    config = json.loads(script[start : script.index("\n'@", start)])
    assert config["configuration_server"] == "https://10.50.1.4:8443"
    assert (
        config["registration"]["passphrase_secret_uri"] == "https://kv1.vault.azure.net/secrets/registration-passphrase"
    )
    assert ("register --server 'https://10.50.1.4:8443' --name 'contoso-sharepoint-mtsw01' "
            "--role master-target") in script
    assert "--passphrase-env DR_VAULT_KEY --address '10.50.1.5' --deadline" in script
    assert "master-target --config $agent\\master-target.toml" in script
    assert "/secrets/storage-" in script and "preview-placeholder" not in script
    # only the published wheels, by hash, from the private container; no index, no name from one
    start = script.index("$requirements = @'\n") + len("$requirements = @'\n")
    pins = script[start : script.index("'@", start)].splitlines()
    assert pins == [f"dr-agent==0.1.0 --hash=sha256:{files[0].sha256}",
                    f"zstandard==0.25.0 --hash=sha256:{files[1].sha256}"]
    assert "--no-index --find-links $packages --require-hashes" in script
    assert "https://acct1.blob.core.windows.net/packages/windows/master-target/$file" in script
    assert all(f"'{w.name}'" in script for w in files) and "pypi" not in script.lower()
    assert script.count("Invoke-WithRetry") >= 4  # secrets, Python, each package: waited for, with a deadline


def test_internet_connectivity_opens_to_process_server_public_addresses_only() -> None:
    estate, plan = estate_and_plan("sharepoint")
    site = estate.sites[0]
    servers = [ps.model_copy(update={"public_address": "198.51.100.7"}) for ps in site.process_servers]
    azure = estate.azure.model_copy(update={"connectivity": "internet"})
    online = estate.model_copy(update={"azure": azure, "sites": [site.model_copy(update={"process_servers": servers})]})
    result = preview(online, plan)
    for nsg in result.of_type(":network:NetworkSecurityGroup"):
        for rule in nsg.inputs.get("securityRules", []):
            if rule["access"] == "Allow":
                assert rule["sourceAddressPrefixes"] == ["198.51.100.7/32"]
    roles = sorted(p.inputs["tags"]["dr-role"] for p in result.of_type(":network:PublicIPAddress"))
    assert roles == sorted(
        ["configuration-server"] * len(plan.config_servers)
        + ["master-target"] * len(plan.master_targets)
        + ["traffic-manager"]
    )
    # without a public address the stack refuses rather than open the port to the internet
    bare = online.model_copy(update={"sites": [site]})
    with pytest.raises(StackInvalid, match="public_address"):
        preview(bare, plan)


@pytest.mark.parametrize("failover", ["none", "test", "planned"])
def test_preview_declares_no_retired_or_retiring_size(example: tuple[str, Estate, StackPlan], failover: str) -> None:
    """Both examples (azure-2026): every VM the stack declares has a size Azure deploys today."""
    from dr.sizes import by_name

    name, estate, _ = example
    result = run(name, failover, None if failover == "none" else _failover_plan(estate))
    vms = result.of_type(":compute:VirtualMachine")
    assert vms
    for vm in vms:
        size = by_name(vm.inputs["hardwareProfile"]["vmSize"])
        assert size is not None and size.status() == "current", (vm.name, size)
        if vm.inputs["tags"]["dr-role"] == "recovery-vm":
            machine = estate.machine(vm.inputs["vmName"])
            assert size.boots(2 if machine.firmware == "uefi" else 1)
    assert failover == "none" or any(v.inputs["tags"]["dr-role"] == "recovery-vm" for v in vms)


def test_retired_sizes_are_refused_before_any_resource() -> None:
    """The seed's profile plans Standard_A3/A4 (retired 2024-08-31): the stack refuses to declare them."""
    estate, _ = estate_and_plan("sharepoint")
    site = estate.sites[0]
    seed = estate.model_copy(update={
        "support_profile": "asr-2015",
        "sites": [site.model_copy(update={"vcenter": site.vcenter.model_copy(update={"version": "5.5"})
                                          if site.vcenter else None})],
    })
    with pytest.raises(StackInvalid, match=r"configuration server .*Standard_A3 was retired on 2024-08-31"):
        preview(seed, make_plan(seed))


def test_refusals_come_before_any_resource() -> None:
    estate, plan = estate_and_plan("sharepoint")
    lrs = estate.model_copy(update={"azure": estate.azure.model_copy(update={"storage_redundancy": "LRS"})})
    with pytest.raises(StackInvalid, match="geo-redundant"):
        check(lrs, plan, preview_options(lrs, plan))
    with pytest.raises(DrError):  # the validator refuses it too, before the stack's own checks
        preview(lrs, plan)
    with pytest.raises(StackInvalid, match="failover_plan"):
        preview(estate, plan, "test", "no-such-plan")


def test_outputs_under_pulumi_runtime_test() -> None:
    """The same program driven the canonical way: set_mocks, then assert inside @pulumi.runtime.test."""
    import contextvars

    from dr.azure.program import declare
    from dr.preview import _mocks_and_monitor

    estate, plan = estate_and_plan("sharepoint")
    azure_mocks, _ = _mocks_and_monitor()
    seen: dict[str, Any] = {}

    def body() -> None:
        pulumi.runtime.set_mocks(azure_mocks, project="dr-azure", stack="unit", preview=False)

        @pulumi.runtime.test  # type: ignore[untyped-decorator]
        def check() -> pulumi.Output[Any]:
            declared = declare(estate, plan, preview_options(estate, plan))

            def record(values: list[Any]) -> None:
                seen["outputs"] = values

            return pulumi.Output.all(
                declared.outputs["storage_accounts"], declared.outputs["master_targets"], declared.root.urn
            ).apply(record)

        check()

    contextvars.Context().run(body)
    accounts, master_targets, urn = seen["outputs"]
    assert accounts == {a.name: naming.storage_account_name(estate.estate, a.name) for a in plan.storage_accounts}
    assert sorted(master_targets) == sorted(m.name for m in plan.master_targets)
    assert urn.endswith(f"dr:azure:Estate::{estate.estate}")


def test_resource_delta_names_added_disks_and_vms() -> None:
    estate, plan = estate_and_plan("sharepoint")
    old_plan = plan
    extra = estate.machines[-1].model_copy(update={"name": "web03"})
    groups = [g.model_copy(update={"members": [*g.members, "web03"]}) for g in estate.protection_groups]
    grown = estate.model_copy(update={"machines": [*estate.machines, extra], "protection_groups": groups})
    delta = resource_delta(estate, grown, old_plan=old_plan)
    assert json.loads(json.dumps(delta)) == delta
    unchanged = resource_delta(estate, estate, old_plan=old_plan, new_plan=old_plan)
    assert unchanged == {"added": [], "removed": [], "changed": []}
    # the MTS now writes web03's disk and the configuration server's spec has web03: both
    # bootstraps change (shown by the dr-bootstrap tag), nothing is removed
    assert not delta["removed"]
    changed = {c["name"]: c["changes"] for c in delta["changed"]}
    moved = {n for n in changed if n.endswith("-vm") and "bootstrap" in changed[n]}
    assert moved == {
        f"{s}-vm" for s in [*(c.name for c in plan.config_servers), *(m.name for m in plan.master_targets)]
    }, changed


def test_existing_network_split_regions_and_kept_addresses() -> None:
    """`network.existing`: the VNet and resource group are looked up, never declared (so `pulumi
    destroy` cannot delete them); a source address inside the recovery subnet is kept at failover
    and never given to a server; a region split is refused before any resource."""
    estate, plan = estate_and_plan("sharepoint")
    network_spec = estate.azure.network.model_copy(update={"existing": True})
    split = estate.model_copy(update={"azure": estate.azure.model_copy(update={"vault_region": "northeurope"})})
    with pytest.raises(StackInvalid, match="vault_region"):
        preview(split, plan)
    azure = estate.azure.model_copy(update={"network": network_spec})
    machines = [m.model_copy(update={"address": "10.50.1.4"}) if m.name == "dc01" else m for m in estate.machines]
    moved = estate.model_copy(update={"azure": azure, "machines": machines})
    result = preview(moved, plan, "planned")
    assert not result.of_type(":network:VirtualNetwork") and not result.of_type(":network:Subnet")
    groups = [g.inputs["resourceGroupName"] for g in result.of_type(":resources:ResourceGroup")]
    assert estate.azure.resource_group not in groups  # only the failover groups are declared
    subnet_id = (
        f"/resourceGroups/{estate.azure.resource_group}/providers/Microsoft.Network/virtualNetworks/"
        f"{network_spec.vnet}/subnets/{network_spec.subnet}"
    )
    for nic in result.of_type(":network:NetworkInterface"):
        assert nic.inputs["ipConfigurations"][0]["subnet"]["id"].endswith(subnet_id)
    addresses = {
        n.inputs["networkInterfaceName"]: n.inputs["ipConfigurations"][0].get("privateIPAddress")
        for n in result.of_type(":network:NetworkInterface")
    }
    assert addresses["dc01-nic0"] == "10.50.1.4"
    servers = [a for name, a in addresses.items() if not name.endswith("-nic0")]
    assert servers and "10.50.1.4" not in servers and all(a for a in servers)


def test_cloud_init_passes_cloud_inits_own_schema(tmp_path: Path) -> None:
    """The rendered cloud-config, checked by cloud-init itself (Debian's package, .ci/setup.d/45-pulumi.sh)."""
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip("cloud-init is not installed (bash .ci/setup.d/45-pulumi.sh installs it)")
    estate, plan = estate_and_plan("linux-estate")
    checked = 0
    for vm in preview(estate, plan).of_type(":compute:VirtualMachine"):
        profile = vm.inputs["osProfile"]
        if profile == "[secret]" or "linuxConfiguration" not in profile:
            continue
        path = tmp_path / f"{vm.inputs['vmName']}.yaml"
        path.write_bytes(base64.b64decode(profile["customData"]))
        done = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        checked += 1
    assert checked == len(plan.config_servers) + sum(1 for m in plan.master_targets if m.os == "linux")
    broken = tmp_path / "broken.yaml"  # the check can fail: a cloud-config cloud-init refuses
    broken.write_text("#cloud-config\npackages: 5\n")
    assert subprocess.run([tool, "schema", "--config-file", str(broken)], capture_output=True, timeout=60).returncode
