"""Azure names and addresses derived from the spec and the plan, shared with the data path.

Pulumi-free on purpose: the master target (issue 6) and the failover runner (issue 7) compute the
same blob addresses from the same functions.

Replica layout: every protected disk is one page blob `replicas/<stream>.vhd` (a fixed VHD) in the
storage account the plan assigns to that disk; master targets keep their recovery-point journal in
container `retention` of their retention account. The stream name, the containers and the blob name
are the data path's contract (`dr_agent.contract`), imported here, never spelt again.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from dr_agent.contract import REPLICA_CONTAINER, RETENTION_CONTAINER, replica_blob, stream_name

from dr.model import EnvRef, FileRef

__all__ = ["REPLICA_CONTAINER", "RETENTION_CONTAINER", "replica_blob", "stream_name"]
# Azure naming rules (learn.microsoft.com, "Naming rules and restrictions for Azure resources").
STORAGE_NAME_MAX = 24  # storage accounts: 3-24 lower-case letters and digits, globally unique
KEYVAULT_NAME_MAX = 24  # key vaults: 3-24 letters, digits and dashes, globally unique
VM_NAME_MAX = 64  # Linux VM names; Windows computer names are cut to 15 (see computer_name)
WINDOWS_COMPUTER_NAME_MAX = 15
DNS_LABEL_MAX = 63  # public IP DNS labels and Traffic Manager relative names: one DNS label


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def storage_account_name(estate: str, plan_name: str) -> str:
    """The Azure name of a plan storage account: lower-case alphanumerics, at most 24, stable.

    Estate and plan name are joined; when that is too long, it is cut and a 6-hex digest of the
    whole keeps it unique and reproducible.
    """
    if re.fullmatch(r"[a-z0-9]{3,24}", plan_name):  # the planner already names accounts Azure-validly
        return plan_name
    full = re.sub(r"[^a-z0-9]", "", f"{estate}{plan_name}".lower())
    if plan_name.lower().startswith(re.sub(r"[^a-z0-9]", "", estate.lower())):
        full = re.sub(r"[^a-z0-9]", "", plan_name.lower())
    if 3 <= len(full) <= STORAGE_NAME_MAX:
        return full
    return full[: STORAGE_NAME_MAX - 6] + _digest(f"{estate}/{plan_name}", 6)


def subscription_key(subscription: EnvRef | FileRef | str) -> str:
    """The subscription a deployment targets, as names mix it in: the id (lower case) when the spec's
    reference resolves here (the stack runs where ARM credentials are), else the reference as written
    (`$AZURE_SUBSCRIPTION_ID`), so an offline `dr plan` or `dr preview` stays stable."""
    from dr.errors import SecretUnavailable
    from dr.secrets import describe, resolve

    try:
        return resolve(subscription, what="the subscription id").strip().lower()
    except SecretUnavailable:
        return describe(subscription)


@dataclass(frozen=True)
class Scope:
    """Where one deployment lives: its subscription (`subscription_key`) and Pulumi stack. Globally
    unique names (Key Vault, DNS labels, Traffic Manager) and role-assignment GUIDs mix both in, so
    two deployments of one spec (two subscriptions, or two stacks in one) never collide, while a
    re-run of the same stack keeps its names."""

    subscription: str
    stack: str = "dr"

    def digest(self, *parts: str, length: int = 6) -> str:
        return _digest("/".join((self.subscription, self.stack, *parts)), length)


def key_vault_name(estate: str, resource_group: str, scope: Scope) -> str:
    """`<estate>-kv-<6 hex>` cut to 24: globally unique per estate, resource group, subscription and
    stack. Azure keeps a deleted vault's name for its soft-delete retention (90 days): a re-deploy of
    the same stack after `pulumi destroy` recovers it (`dr:keyVaultRecover true`) or needs a purge."""
    suffix = "-kv-" + scope.digest(estate, resource_group)
    return estate[: KEYVAULT_NAME_MAX - len(suffix)].rstrip("-") + suffix


def dns_label(scope: Scope, *parts: str, limit: int = DNS_LABEL_MAX) -> str:
    """A DNS label unique per deployment: `<parts joined by ->-<6 hex>`, lower case, at most `limit`."""
    suffix = "-" + scope.digest(*parts)
    base = re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())
    return base[: limit - len(suffix)].strip("-") + suffix


def role_assignment_id(scope: Scope, estate: str, name: str, role: str) -> str:
    """The GUID of a role assignment, stable for one deployment and different between deployments."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dr/{scope.subscription}/{scope.stack}/{estate}/{name}/{role}"))


def storage_env(account: str) -> str:
    """The environment variable holding an account's connection string on a master target."""
    return f"DR_STORAGE_{account.upper()}"


def replica_blob_url(account: str, machine: str, disk: str) -> str:
    """The live replica the master target is still writing: never what a failover imports."""
    return f"https://{account}.blob.core.windows.net/{REPLICA_CONTAINER}/{replica_blob(machine, disk)}"


# Where a failover's recovery disks are: `dr failover` materialises each disk at the chosen recovery
# point into the page blob `<machine>/<disk>.vhd` of a container named after the plan's recovery
# resource group, in the account whose connection string it is given (`--storage`); the stack's
# recovery VMs import exactly those blobs (the estate's recovery-disk account, output
# `recovered_disks`), never the live replica.
def recovered_disk_container(resource_group: str) -> str:
    """An Azure container name for a resource group: 3-63 lower-case letters, digits and single dashes."""
    name = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", resource_group.lower())).strip("-")[:63].rstrip("-")
    return name.ljust(3, "0")


def recovered_disk_blob(machine: str, disk: str) -> str:
    return f"{machine}/{disk}.vhd"


def recovered_disk_url(account: str, resource_group: str, machine: str, disk: str) -> str:
    return (f"https://{account}.blob.core.windows.net/{recovered_disk_container(resource_group)}/"
            f"{recovered_disk_blob(machine, disk)}")


def short_name(estate: str, name: str) -> str:
    """A plan server name without the estate prefix the planner gives it (`<estate>-mtsw01` -> `mtsw01`)."""
    return name.removeprefix(f"{estate}-") or name


def computer_name(name: str, windows: bool) -> str:
    """The guest host name; Windows keeps 15 characters (NetBIOS), so pass a short name."""
    cleaned = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")
    return cleaned[:WINDOWS_COMPUTER_NAME_MAX] if windows else cleaned[:VM_NAME_MAX]


def failover_resource_group(resource_group: str, recovery_plan: str) -> str:
    """One resource group per recovery plan (the seed: one cloud service per failed-over plan)."""
    return f"{resource_group}-{recovery_plan}-failover"


def test_failover_resource_group(resource_group: str, recovery_plan: str) -> str:
    """A test failover's own resource group (isolated network and test VMs): cleanup deletes it whole."""
    return f"{failover_resource_group(resource_group, recovery_plan)}-test"
