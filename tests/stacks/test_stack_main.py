"""`stacks/azure/__main__.py` itself, run as `pulumi up` would run it, but under the mock runtime."""

from __future__ import annotations

import base64
import contextvars
import re
import runpy
from pathlib import Path

import pulumi
import pytest
from pulumi.runtime import mocks
from stack_examples import EXAMPLES, ROOT

from dr.azure.options import PREVIEW_SSH_KEY
from dr.preview import _mocks_and_monitor


@pytest.mark.slow
def test_main_reads_stack_config_and_declares_the_estate(tmp_path: Path) -> None:
    """Also the packages: `pulumi up` builds the project's wheels from the checkout, collects their
    dependency wheels for each server's platform, uploads them all to the private `packages`
    container, and every bootstrap installs exactly those, by hash, from there."""
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
                "dr:packagesDir": str(tmp_path),
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

    # Every wheel is published once per (platform, role) with its SHA-256, from the files built here.
    blobs = [d.inputs for d in recorder.declarations if d.type == "azure-native:storage:Blob"]
    assert blobs and all(b["blobName"].startswith(("linux/", "windows/")) for b in blobs)
    published = {b["blobName"]: b["metadata"]["sha256"] for b in blobs}
    assert {"linux/configuration-server", "windows/master-target"} == {n.rsplit("/", 1)[0] for n in published}
    containers = [d.inputs for d in recorder.declarations if d.type == "azure-native:storage:BlobContainer"
                  and d.inputs["containerName"] == "packages"]
    assert len(containers) == 1 and containers[0]["publicAccess"] == "None"
    from dr.azure.wheels import digest

    for name, sha in published.items():
        assert digest(tmp_path / name) == sha, name
    # The bootstraps pin exactly the published wheels of their folder by hash, and name no index.
    vms = [d.inputs for d in recorder.declarations if d.type == "azure-native:compute:VirtualMachine"
           and d.inputs["tags"]["dr-role"] in ("configuration-server", "master-target")]
    assert len(vms) == 2
    checked = 0
    for vm in vms:
        if not isinstance(vm["osProfile"], dict):  # Windows: the admin password makes it all secret
            continue  # (test_azure_stack.py inspects the rendered Windows bootstrap)
        text = base64.b64decode(vm["osProfile"]["customData"]).decode()
        folder = "linux/configuration-server" if vm["tags"]["dr-role"] == "configuration-server" else \
            "windows/master-target"
        pins = dict(re.findall(r"^\s*([a-z0-9._-]+==[^ ]+) --hash=sha256:([0-9a-f]{64})$", text, re.M))
        mine = {n.rsplit("/", 1)[1]: sha for n, sha in published.items() if n.startswith(folder + "/")}
        assert sorted(pins.values()) == sorted(mine.values()), vm["tags"]["dr-role"]
        checked += 1
        assert "--require-hashes" in text and "--no-index" in text
        assert "pypi.org" not in text and "pip install dr" not in text
    assert checked == 1
