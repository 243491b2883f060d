"""Custom data of the always-on servers, rendered from spec + plan with `blueprints/` templates.

Linux master targets and the configuration server get cloud-init (`blueprints/cloud-init/`), Windows
master targets a PowerShell bootstrap (`blueprints/windows/`). What each one carries: the
configuration server's address, the Key Vault URI of the vault registration passphrase (a
reference: the VM fetches the value with its managed identity), its role, and for a master target
the machines, disks and blob addresses it writes. Pulumi-free, so it is tested on its own.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dr_agent.contract import CS_PORT, MT_PORT, Layout

from dr.azure import naming
from dr.azure.contract import MasterTarget, StackPlan
from dr.blueprints import render
from dr.errors import DrError
from dr.model import Estate

CONTROL_PORT = CS_PORT  # configuration server API and registration (the data path's contract)
# process server -> master target replication stream: the master target's port (the data path's contract)
DATA_PORT = MT_PORT
PASSPHRASE_SECRET = "registration-passphrase"  # Key Vault secret name of the vault registration passphrase
ADMIN_PASSWORD_SECRET = "admin-password"  # Key Vault secret name of the Windows administrator password
PYTHON_WINDOWS_VERSION = "3.11.9"  # last CPython 3.11 release with a Windows installer (python.org)
RETENTION_LUN = 0  # the retention disk is the master target's first data disk
# Azure accepts at most 64 KiB of custom data, base64-encoded (learn.microsoft.com, "Custom data and
# cloud-init on Azure Virtual Machines").
CUSTOM_DATA_MAX_BYTES = 65536


class CustomDataTooLarge(DrError):
    exit_code = 1


def storage_secret(account: str) -> str:
    """Key Vault secret name holding a storage account's connection string (for the master target)."""
    return f"storage-{account}"


BOOTSTRAP_DEADLINE_S = 1800  # first boot gives up (and says so on the console) after 30 minutes
PACKAGES_CONTAINER = "packages"  # the private container of the estate's own wheels
PREVIEW_HASH = "PREVIEW-NOT-BUILT"  # `dr preview` builds no wheels: the real hashes exist at `pulumi up`
IMDS = "http://169.254.169.254"  # Azure Instance Metadata Service (managed identity tokens)


@dataclass(frozen=True)
class Registration:
    """What every server needs to find and join the configuration server."""

    configuration_server: str  # https://<private address>:CS_PORT
    passphrase_secret_uri: str  # https://<vault>.vault.azure.net/secrets/registration-passphrase

    @property
    def vault_uri(self) -> str:
        return self.passphrase_secret_uri.split("/secrets/", 1)[0]


@dataclass(frozen=True)
class Packages:
    """What one server installs: its wheels in the estate's private container, pinned by hash."""

    base_url: str  # https://<account>.blob.core.windows.net/packages/<target>/<role>
    files: tuple[str, ...]  # wheel file names
    requirements: str  # pip requirements: every wheel as name==version --hash=sha256:...


def packages_url(account: str, target: str, role: str) -> str:
    return f"https://{account}.blob.core.windows.net/{PACKAGES_CONTAINER}/{target}/{role}"


def packages_for(houses: Any, account: str, target: str, role: str, version: str) -> Packages:
    """The server's packages from the built wheelhouses (`dr.azure.wheels.Wheelhouse`), or, for
    `dr preview` (nothing built), the project's wheels with a placeholder hash."""
    from dr.azure.wheels import ROLE_PROJECT_WHEELS

    url = packages_url(account, target, role)
    for house in houses:
        if house.target == target and house.role == role:
            return Packages(url, tuple(w.name for w in house.wheels), house.requirements())
    names = [f"{dist}-{version}-py3-none-any.whl" for dist in ROLE_PROJECT_WHEELS[role]]
    requirements = "".join(f"{n.split('-')[0].replace('_', '-')}=={version} --hash=sha256:{PREVIEW_HASH}\n"
                           for n in sorted(names))
    return Packages(url, tuple(sorted(names)), requirements)


def passphrase_secret_uri(key_vault: str) -> str:
    return f"https://{key_vault}.vault.azure.net/secrets/{PASSPHRASE_SECRET}"


def _checked(name: str, text: str) -> str:
    size = len(base64.b64encode(text.encode()))
    if size > CUSTOM_DATA_MAX_BYTES:
        raise CustomDataTooLarge(
            f"the custom data of {name} is {size} bytes base64, Azure accepts {CUSTOM_DATA_MAX_BYTES}: "
            "split the estate across more servers in the plan or shorten the spec"
        )
    return text


def _toml(table: str, values: dict[str, Any]) -> str:
    lines = [f"[{table}]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")  # strings, numbers: JSON literals are TOML literals
    return "\n".join(lines) + "\n"


def master_target_config(estate: Estate, plan: StackPlan, mts: MasterTarget, reg: Registration) -> dict[str, Any]:
    disks: list[dict[str, Any]] = []
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
    accounts = sorted({d["storage_account"] for d in disks})
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
        "storage_accounts": accounts,
        "retention": {
            "storage_account": naming.storage_account_name(estate.estate, retention.name) if retention else None,
            "container": naming.RETENTION_CONTAINER,
            "lun": RETENTION_LUN,
            "hours": retention_hours(estate, mts),
        },
    }


def retention_hours(estate: Estate, mts: MasterTarget) -> float:
    """The longest retention window of the protection groups this master target carries."""
    windows = [g.policy.retention for m in mts.machines if (g := estate.group_of(m)) is not None]
    return max(windows).total_seconds() / 3600 if windows else 24.0


def data_path_configs(estate: Estate) -> dict[str, str]:
    """Every service configuration the data path renders (`dr replica configs`), keyed
    `<server>/<file>`: the stack ships the master targets' own, never types them a second time."""
    from dr.cli.replica import render_configs
    from dr.plan import make_plan

    return render_configs(estate, make_plan(estate))


def _bootstrap_json(role: str, name: str, packages: Packages, secrets: list[tuple[str, str]], **rest: Any) -> str:
    """/etc/dr/bootstrap.json: what `blueprints/cloud-init/bootstrap.py` does at first boot."""
    layout = Layout("/")
    config: dict[str, Any] = {
        "role": role,
        "name": name,
        "deadline_s": BOOTSTRAP_DEADLINE_S,
        "imds": IMDS,
        "secrets": [{"key": key, "uri": uri} for key, uri in secrets],
        "packages": {
            "base_url": packages.base_url,
            "files": list(packages.files),
            "dir": "/var/lib/dr/packages",
            "requirements": "/etc/dr/requirements.txt",
            "venv": str(layout.venv),
            "links": ["dr-agent"] if role == "master-target" else ["dr", "dr-agent"],
        },
    }
    config.update(rest)
    return json.dumps(config, indent=2)


def render_master_target(
    estate: Estate,
    plan: StackPlan,
    mts: MasterTarget,
    reg: Registration,
    data_path: Mapping[str, str],
    packages: Packages,
    address: str,
) -> str:
    config = master_target_config(estate, plan, mts, reg)
    windows = mts.os == "windows"
    template = "windows/master-target.ps1.j2" if windows else "cloud-init/master-target.yaml.j2"
    toml, unit = data_path[f"{mts.name}/master-target.toml"], data_path[f"{mts.name}/dr-master-target.service"]
    storage = [
        {"env": naming.storage_env(account), "uri": f"{reg.vault_uri}/secrets/{storage_secret(account)}"}
        for account in config["storage_accounts"]
    ]
    layout = Layout("/")
    bootstrap = _bootstrap_json(
        "master-target", mts.name, packages,
        [("DR_VAULT_KEY", reg.passphrase_secret_uri), *[(a["env"], a["uri"]) for a in storage]],
        env_file=str(layout.env_file), env_keys=[a["env"] for a in storage],
        register={"server": reg.configuration_server, "name": mts.name, "role": "master-target",
                  "out": str(layout.identity_dir), "addresses": [address]},
        start=[["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "dr-master-target.service"]],
    )
    return _checked(
        mts.name,
        render(
            template,
            agent_toml=toml,
            agent_unit=unit,
            storage=storage,
            name=mts.name,
            estate=estate.estate,
            config_json=json.dumps(config, indent=2),
            bootstrap_json=bootstrap,
            requirements=packages.requirements,
            packages=packages,
            address=address,
            passphrase_secret_uri=reg.passphrase_secret_uri,
            configuration_server=reg.configuration_server,
            data_port=DATA_PORT,
            python_version=PYTHON_WINDOWS_VERSION,
            deadline_s=BOOTSTRAP_DEADLINE_S,
        ),
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


def render_config_server(estate: Estate, name: str, reg: Registration, packages: Packages) -> str:
    # The server reads the spec itself (`dr config-server start SPEC`): shipped gzip+base64.
    # `include:` is already merged into the estate, so it is left out.
    spec = json.dumps(estate.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude={"include"}))
    bootstrap = _bootstrap_json(
        "configuration-server", name, packages, [("DR_VAULT_KEY", reg.passphrase_secret_uri)],
        passphrase_file="/etc/dr/registration.passphrase",
        start=[["mkdir", "-p", "/var/lib/dr"], ["systemctl", "daemon-reload"],
               ["systemctl", "enable", "--now", "dr-config-server.service"]],
    )
    return _checked(
        name,
        render(
            "cloud-init/configuration-server.yaml.j2",
            spec_gz_b64=base64.b64encode(gzip.compress(spec.encode(), mtime=0)).decode(),
            name=name,
            estate=estate.estate,
            config_json=json.dumps(config_server_config(estate, name, reg), indent=2),
            bootstrap_json=bootstrap,
            requirements=packages.requirements,
            passphrase_secret_uri=reg.passphrase_secret_uri,
            control_port=CONTROL_PORT,
        ),
    )
