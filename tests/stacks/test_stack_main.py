"""`stacks/azure/__main__.py` itself, run as `pulumi up` would run it, but under the mock runtime."""

from __future__ import annotations

import contextvars
import runpy

import pulumi
from pulumi.runtime import mocks
from stack_examples import EXAMPLES, ROOT

from dr.azure.options import PREVIEW_SSH_KEY
from dr.preview import _mocks_and_monitor


def test_main_reads_stack_config_and_declares_the_estate() -> None:
    azure_mocks, recorder_class = _mocks_and_monitor()
    recorder = recorder_class(azure_mocks)

    def body() -> None:
        pulumi.runtime.set_all_config(
            {
                "dr:spec": str(EXAMPLES["sharepoint"]),
                "dr:sshPublicKey": PREVIEW_SSH_KEY,
                "dr:registrationPassphrase": "from-stack-config",
                "dr:adminPassword": "from-stack-config-too",
                "dr:failover": "test",
            },
            secret_keys=["dr:registrationPassphrase", "dr:adminPassword"],
        )
        mocks.set_mocks(azure_mocks, project="dr-azure", stack="ci", preview=True, monitor=recorder)
        mocks.test(lambda: runpy.run_path(str(ROOT / "stacks" / "azure" / "__main__.py"), run_name="__main__"))()  # type: ignore[no-untyped-call]

    contextvars.Context().run(body)
    types = [d.type for d in recorder.declarations]
    assert types.count("dr:azure:RecoveryVm") == 5  # dr:failover test, the example's only plan
    assert "dr:azure:IsolatedNetwork" in types
    secrets = [d.inputs for d in recorder.declarations if d.type == "azure-native:keyvault:Secret"]
    # passphrase, admin password, and one connection string per replica account
    replica = [
        d
        for d in recorder.declarations
        if d.type == "azure-native:storage:StorageAccount" and d.inputs["tags"]["dr-role"] == "replica"
    ]
    assert len(secrets) == 2 + len(replica) and all("from-stack-config" not in str(s) for s in secrets)
