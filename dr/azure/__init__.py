"""The Azure side of a DR estate as a Pulumi program (issue 4).

Modules, by concept:
    contract    the plan as the stack reads it (the `dr plan --format json` contract); pulumi-free
    naming      Azure names and the replica blob layout shared with the data path; pulumi-free
    options     what a run is asked to do (failover kind and plan, secrets) and the pre-flight checks
    bootstrap   cloud-init / PowerShell custom data rendered from `blueprints/`; pulumi-free
    components  one pulumi.ComponentResource per DR concept
    program     `declare(estate, plan, options)`, called by `stacks/azure/__main__.py` and `dr preview`

Importing this package imports no Pulumi: `components` and `program` do, and only the submodules
of pulumi_azure_native they use.
"""
