"""The Pulumi program of a dr estate: thin on purpose. The spec says what, `dr plan` decides sizes,
`dr.azure.program.declare` declares; this file only reads stack config and secrets.

    pulumi config set dr:spec ../../examples/sharepoint/dr.yaml
    pulumi config set --secret dr:registrationPassphrase "$(openssl rand -base64 24)"
    pulumi config set dr:sshPublicKey "$(cat ~/.ssh/id_ed25519.pub)"
    pulumi config set --secret dr:adminPassword ...      # only when the plan has Windows master targets
    pulumi up
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from dr import __version__
from dr.azure.contract import plan_of
from dr.azure.options import StackOptions
from dr.azure.program import declare
from dr.validate import load_valid


def main() -> None:
    config = pulumi.Config("dr")
    spec = Path(config.require("spec"))
    if not spec.is_absolute():
        spec = Path(pulumi.get_root_directory() or ".") / spec
    estate, _warnings = load_valid(spec)
    plan = plan_of(estate)
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
    )
    declared = declare(estate, plan, options)
    for key, value in declared.outputs.items():
        pulumi.export(key, value)


main()
