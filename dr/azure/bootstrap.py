"""Custom data of the always-on servers, rendered from spec + plan with `blueprints/` templates.

Linux master targets and the configuration server get cloud-init (`blueprints/cloud-init/`), Windows
master targets a PowerShell bootstrap (`blueprints/windows/`). What each one carries: the
configuration server's address, the Key Vault URI of the vault registration passphrase (a
reference: the VM fetches the value with its managed identity), its role, and for a master target
the machines, disks and blob addresses it writes. Pulumi-free, so it is tested on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dr.azure import naming
from dr.azure.contract import MasterTarget, StackPlan
from dr.blueprints import render
from dr.model import Estate

CONTROL_PORT = 443  # configuration server API and registration (ASR: HTTPS 443 to the CS)
DATA_PORT = 9443  # process server -> master target replication stream (ASR's data port, 9443)
PASSPHRASE_SECRET = "registration-passphrase"  # Key Vault secret name of the vault registration passphrase
ADMIN_PASSWORD_SECRET = "admin-password"  # Key Vault secret name of the Windows administrator password
PYTHON_WINDOWS_VERSION = "3.11.9"  # last CPython 3.11 release with a Windows installer (python.org)
RETENTION_LUN = 0  # the retention disk is the master target's first data disk


@dataclass(frozen=True)
class Registration:
    """What every server needs to find and join the configuration server."""

    configuration_server: str  # https://<private address>:443
    passphrase_secret_uri: str  # https://<vault>.vault.azure.net/secrets/registration-passphrase
    package_version: str


def passphrase_secret_uri(key_vault: str) -> str:
    return f"https://{key_vault}.vault.azure.net/secrets/{PASSPHRASE_SECRET}"


def master_target_config(estate: Estate, plan: StackPlan, mts: MasterTarget, reg: Registration) -> dict[str, Any]:
    disks = []
    for machine_name in mts.machines:
        machine = estate.machine(machine_name)
        for disk in machine.disks:
            account = plan.account_of_disk(machine.name, disk.name)
            azure_name = naming.storage_account_name(estate.estate, account.name)
            disks.append(
                {
                    "disk": f"{machine.name}/{disk.name}",
                    "size_gb": disk.size_gb,
                    "storage_account": azure_name,
                    "container": naming.REPLICA_CONTAINER,
                    "blob": naming.replica_blob(machine.name, disk.name),
                }
            )
    retention = plan.retention_account_of(mts.name)
    return {
        "role": "master-target",
        "name": mts.name,
        "estate": estate.estate,
        "os": mts.os,
        "configuration_server": reg.configuration_server,
        "registration": {"passphrase_secret_uri": reg.passphrase_secret_uri},
        "listen": {"port": DATA_PORT},
        "machines": list(mts.machines),
        "disks": disks,
        "retention": {
            "storage_account": naming.storage_account_name(estate.estate, retention.name) if retention else None,
            "container": naming.RETENTION_CONTAINER,
            "lun": RETENTION_LUN,
        },
    }


def render_master_target(estate: Estate, plan: StackPlan, mts: MasterTarget, reg: Registration) -> str:
    config = master_target_config(estate, plan, mts, reg)
    template = "windows/master-target.ps1.j2" if mts.os == "windows" else "cloud-init/master-target.yaml.j2"
    return render(
        template,
        name=mts.name,
        estate=estate.estate,
        config_json=json.dumps(config, indent=2),
        passphrase_secret_uri=reg.passphrase_secret_uri,
        configuration_server=reg.configuration_server,
        package_version=reg.package_version,
        data_port=DATA_PORT,
        python_version=PYTHON_WINDOWS_VERSION,
    )


def config_server_config(estate: Estate, name: str, reg: Registration) -> dict[str, Any]:
    return {
        "role": "configuration-server",
        "name": name,
        "estate": estate.estate,
        "listen": {"port": CONTROL_PORT},
        "registration": {"passphrase_secret_uri": reg.passphrase_secret_uri},
        "protection_groups": [g.name for g in estate.protection_groups],
        "recovery_plans": [p.name for p in estate.recovery_plans],
    }


def render_config_server(estate: Estate, name: str, reg: Registration) -> str:
    return render(
        "cloud-init/configuration-server.yaml.j2",
        name=name,
        estate=estate.estate,
        config_json=json.dumps(config_server_config(estate, name, reg), indent=2),
        passphrase_secret_uri=reg.passphrase_secret_uri,
        package_version=reg.package_version,
        control_port=CONTROL_PORT,
    )
