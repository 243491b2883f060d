"""What one run of the stack is asked to do, and the checks made before the first resource.

Pulumi-free: `dr preview` and the tests build options in Python; `stacks/azure/__main__.py` reads
them from stack config (`dr:failover`, `dr:failover_plan`, secrets as Pulumi secrets).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal, get_args

from dr import __version__
from dr.azure.contract import StackPlan
from dr.errors import EXIT_INVALID, DrError
from dr.model import Estate

FailoverKind = Literal["none", "test", "planned", "unplanned"]
FAILOVER_KINDS: tuple[str, ...] = get_args(FailoverKind)
GEO_REDUNDANT = {
    "GRS": "Standard_GRS",
    "RA-GRS": "Standard_RAGRS",
    "GZRS": "Standard_GZRS",
    "RA-GZRS": "Standard_RAGZRS",
}
# Placeholders `dr preview` uses where a real stack reads Pulumi secrets (never deployed).
PREVIEW_SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPreviewOnlyKeyNotForDeployment dr-preview"


class StackInvalid(DrError):
    """The spec, plan and stack options cannot be declared together; lists every problem."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        super().__init__(f"the stack cannot be declared: {problems[0]}{more}")


@dataclass(frozen=True)
class StackOptions:
    """One run's choices. Secrets are pulumi Inputs marked secret (typed Any: no pulumi import here)."""

    ssh_public_key: str
    registration_passphrase: Any
    admin_password: Any | None = None
    admin_user: str = "dradmin"
    failover: FailoverKind = "none"
    failover_plan: str | None = None
    package_version: str = __version__  # the wheels the servers install (dr_agent.__version__)
    stack: str = "preview"  # the Pulumi stack: names and role-assignment GUIDs mix it in (dr.azure.naming.Scope)
    key_vault_recover: bool = False  # recover the soft-deleted Key Vault of an earlier destroy of this stack
    # The wheelhouses the servers install (dr.azure.wheels.Wheelhouse, built at `pulumi up`); empty
    # in `dr preview`, which shows the project's wheel names with a placeholder hash instead.
    packages: tuple[Any, ...] = ()


def failover_plan_name(estate: Estate, options: StackOptions) -> str | None:
    """The recovery plan a failover brings up; None when no failover is requested."""
    if options.failover == "none":
        return None
    if options.failover_plan is not None:
        return options.failover_plan
    if len(estate.recovery_plans) == 1:
        return estate.recovery_plans[0].name
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


CONTROL_PORT_ROLE = "control"
DATA_PORT_ROLE = "data"


def primary_site_sources(estate: Estate, role: str) -> list[str]:
    """Where the primary site reaches Azure from, as NSG source prefixes (never `*` or `Internet`).

    internet: the process servers' public addresses (/32). vpn/expressroute: `on_premises_prefixes`;
    when the spec lists none, the process servers' own addresses (/32), and for the control port
    also the protected machines' addresses (their agents register with the configuration server).
    """
    azure = estate.azure
    servers = [ps for site in estate.sites for ps in site.process_servers]
    if azure.connectivity == "internet":
        return sorted({f"{ps.public_address}/32" for ps in servers if ps.public_address and _is_ip(ps.public_address)})
    if azure.on_premises_prefixes:
        return list(azure.on_premises_prefixes)
    addresses = {ps.address for ps in servers if _is_ip(ps.address)}
    if role == CONTROL_PORT_ROLE:
        addresses |= {m.address for m in estate.protected_machines if m.address and _is_ip(m.address)}
    return sorted(f"{a}/32" for a in addresses)


def check(estate: Estate, plan: StackPlan, options: StackOptions) -> None:
    """Every problem at once, before any resource is declared; raises StackInvalid."""
    problems: list[str] = []
    azure = estate.azure
    if options.failover not in FAILOVER_KINDS:
        problems.append(f"dr:failover is {options.failover!r}, expected one of {', '.join(FAILOVER_KINDS)}")
    plans = [p.name for p in estate.recovery_plans]
    if options.failover != "none":
        name = failover_plan_name(estate, options)
        if name is None:
            problems.append(
                f"a {options.failover} failover needs a recovery plan: set dr:failover_plan to one of "
                f"{', '.join(plans) or '(none: add recovery_plans to the spec)'}"
            )
        elif name not in plans:
            problems.append(f"dr:failover_plan is {name!r}, expected one of {', '.join(plans) or '(none)'}")
    if azure.storage_redundancy not in GEO_REDUNDANT:
        problems.append(
            f"azure.storage_redundancy is {azure.storage_redundancy}, expected a geo-redundant one "
            f"({', '.join(GEO_REDUNDANT)}): replicas must survive the loss of the region"
        )
    if azure.connectivity == "internet":
        servers = [ps for site in estate.sites for ps in site.process_servers]
        if not servers:
            problems.append(
                "connectivity is internet but no site declares a process server: declare them with "
                "public_address so 443/9444 open to those addresses only"
            )
        for ps in servers:
            if ps.public_address is None or not _is_ip(ps.public_address):
                problems.append(
                    f"process server {ps.name} has public_address {ps.public_address!r}, expected an IP "
                    "address (connectivity internet opens 443/9444 to it only)"
                )
    elif not azure.on_premises_prefixes and not primary_site_sources(estate, DATA_PORT_ROLE):
        problems.append(
            f"connectivity is {azure.connectivity} but neither azure.on_premises_prefixes nor a process "
            "server address (an IP) is declared: list the primary site's prefixes so 443/9444 open to them only"
        )
    if any(m.os == "windows" for m in plan.master_targets) and options.admin_password is None:
        problems.append(
            "the plan has Windows master targets: set the secret dr:adminPassword "
            "(pulumi config set --secret dr:adminPassword ...)"
        )
    if not options.ssh_public_key.startswith(("ssh-", "ecdsa-")):
        problems.append("dr:sshPublicKey is not an OpenSSH public key (ssh-ed25519 ... / ssh-rsa ...)")
    known = {m.name for m in estate.machines}
    for mts in plan.master_targets:
        for machine in mts.machines:
            if machine not in known:
                problems.append(f"the plan's master target {mts.name} carries {machine!r}, not in the spec")
    requested = failover_plan_name(estate, options)
    problems.extend(retired_sizes(estate, plan, requested if options.failover != "none" else None))
    for rp in estate.recovery_plans:
        if rp.name != requested:
            continue
        for group in rp.groups:
            for machine in group.machines:
                if machine not in {v.machine for v in plan.failover_vms}:
                    problems.append(f"recovery plan {rp.name}: the plan has no failover size for {machine}")
    if problems:
        raise StackInvalid(problems)


def retired_sizes(estate: Estate, plan: StackPlan, failover_plan: str | None) -> list[str]:
    """A problem per declared VM whose size Microsoft retired: Azure refuses to create it, so the
    stack refuses first (a retiring size is only the planner's warning). Failover VMs count only for
    the recovery plan being failed over."""
    from dr.sizes import CURRENT_PROFILE, by_name

    declared = [(f"configuration server {c.name}", c.size) for c in plan.config_servers]
    declared += [(f"master target {m.name}", m.size) for m in plan.master_targets]
    for rp in estate.recovery_plans:
        if rp.name == failover_plan:
            names = {m for group in rp.groups for m in group.machines}
            declared += [(f"failover VM of {v.machine}", v.size) for v in plan.failover_vms if v.machine in names]
    problems = []
    for what, name in declared:
        size = by_name(name)
        if size is not None and size.status() == "retired":
            problems.append(
                f"{what}: {size.retirement()} and cannot be deployed; choose support_profile: {CURRENT_PROFILE} "
                "(or a current azure_size) and run `dr plan` again"
            )
    return problems


def check_spec(estate: Estate) -> None:
    """The spec's own rules (support matrix included), for an Estate built in Python: StackInvalid
    naming every error (a loaded file was already checked, with positions, by `load_valid`)."""
    from dr.validate import check_estate

    report = check_estate(estate)
    if report.errors:
        raise StackInvalid([f"the spec: {f.dotted}: {f.message}" for f in report.errors])
