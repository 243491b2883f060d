"""The Pulumi program of a dr estate: thin on purpose. The spec says what, `dr plan` decides sizes,
`dr.azure.program.declare` declares; this file only reads stack config and secrets.

    pulumi config set dr:spec ../../examples/sharepoint/dr.yaml
    pulumi config set --secret dr:registrationPassphrase "$(openssl rand -base64 24)"
    pulumi config set dr:sshPublicKey "$(cat ~/.ssh/id_ed25519.pub)"
    pulumi config set --secret dr:adminPassword ...      # only when the plan has Windows master targets
    pulumi up             # builds the project's wheels from this checkout (or dr:wheelDir) and publishes them
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from dr import __version__
from dr.azure import wheels
from dr.azure.contract import StackPlan, plan_of
from dr.azure.options import StackOptions
from dr.azure.program import declare
from dr.validate import load_valid


def publish(plan: StackPlan, wheel_dir: str | None, packages_dir: str | None) -> tuple[wheels.Wheelhouse, ...]:
    """The wheelhouses the servers install: the project's two wheels (built from this checkout, or
    taken from `dr:wheelDir`) and their dependency wheels for each server's platform, under
    `dr:packagesDir` (default .dr-packages/ beside this program); the stack uploads them to the
    estate's private container."""
    out = Path(packages_dir) if packages_dir else Path(pulumi.get_root_directory() or ".") / ".dr-packages"
    if wheel_dir:
        built = [wheels.Wheel(p, wheels.digest(p)) for p in Path(wheel_dir).glob("dr_*.whl")]
        found = {w.distribution: w for w in built}
        if set(found) != {"dr_agent", "dr_as_code"}:
            raise wheels.WheelBuildFailed(f"dr:wheelDir {wheel_dir} must hold one dr_agent and one dr_as_code wheel")
        project = (found["dr_agent"], found["dr_as_code"])
    else:
        project = wheels.build(wheels.checkout_root(), out / "project")
    wanted = {("linux", "configuration-server")} if plan.config_servers else set()
    wanted |= {(m.os, "master-target") for m in plan.master_targets}
    return tuple(wheels.collect(project, role, target, out) for target, role in sorted(wanted))


def main() -> None:
    config = pulumi.Config("dr")
    spec = Path(config.require("spec"))
    if not spec.is_absolute():
        spec = Path(pulumi.get_root_directory() or ".") / spec
    estate, _warnings = load_valid(spec)
    plan = plan_of(estate)
    houses = publish(plan, config.get("wheelDir"), config.get("packagesDir"))
    options = StackOptions(
        ssh_public_key=config.require("sshPublicKey"),
        registration_passphrase=config.require_secret("registrationPassphrase"),
        admin_password=config.get_secret("adminPassword"),
        admin_user=config.get("adminUser") or "dradmin",
        failover=config.get("failover") or "none",  # type: ignore[arg-type]  # checked by declare()
        failover_plan=config.get("failover_plan") or None,
        package_version=__version__,
        stack=pulumi.get_stack(),
        key_vault_recover=config.get_bool("keyVaultRecover") or False,
        packages=houses,
    )
    declared = declare(estate, plan, options)
    for key, value in declared.outputs.items():
        pulumi.export(key, value)


main()
