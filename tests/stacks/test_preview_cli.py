"""`dr preview` end to end in a subprocess, and the import discipline: validate/plan never load Pulumi."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result
from stack_examples import EXAMPLES, ROOT

from dr.azure.bootstrap import CONTROL_PORT, DATA_PORT
from dr.cli import cli

PROBE = """
import sys
from click.testing import CliRunner
from dr.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
loaded = sorted(m for m in sys.modules if m == "pulumi" or m.startswith(("pulumi.", "pulumi_azure_native")))
print(result.exit_code, len(loaded), ",".join(loaded[:5]))
"""


def _probe(*args: str) -> tuple[int, int, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    return int(out[0]), int(out[1]), out[2] if len(out) > 2 else ""


def test_validate_and_plan_never_import_pulumi() -> None:
    spec = str(EXAMPLES["sharepoint"])
    for command in (["validate", spec], ["plan", spec], ["plan", spec, "--format", "json"]):
        code, loaded, names = _probe(*command)
        assert code == 0, command
        assert loaded == 0, f"dr {command[0]} imported {names}"
    # the probe can fail: preview does import pulumi, and only the azure-native services it uses
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json; from dr.cli import cli; from click.testing import CliRunner;"
            f"CliRunner().invoke(cli, ['preview', {spec!r}]);"
            "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules"
            " if m.startswith('pulumi_azure_native.') and m.count('.') >= 2})))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # pulumi_azure_native registers every service as a lazy module; a service really loaded has
    # its own submodules in sys.modules
    services = {m for m in json.loads(out) if not m.startswith("_") and m != "config"}
    assert services == {
        "authorization",
        "compute",
        "keyvault",
        "managedidentity",
        "network",
        "resources",
        "storage",
        "trafficmanager",
    }


def test_preview_json_markdown_and_text(tmp_path: Path) -> None:
    spec = str(EXAMPLES["sharepoint"])
    runner = CliRunner()

    def dr(*args: str) -> Result:
        return runner.invoke(cli, ["preview", spec, *args])

    data = json.loads(dr("--format", "json", "--failover", "test").stdout)
    assert data["failover"] == "test" and data["failover_plan"] == "sharepoint"
    types = {r["type"] for r in data["resources"]}
    assert "dr:azure:RecoveryVm" in types and "azure-native:trafficmanager:Profile" in types
    by_urn = {r["urn"]: r for r in data["resources"]}
    for r in data["resources"]:
        if r["type"] != "dr:azure:Estate":
            assert r["parent"] in by_urn, r["name"]  # every resource hangs under the estate's tree
    markdown = dr("--format", "markdown").stdout
    assert markdown.startswith("### Azure resources of `contoso-sharepoint`") and "| Type | Name | Parent |" in markdown
    text = dr().stdout
    assert f"allow Tcp/{CONTROL_PORT}" in text and f"allow Tcp/{DATA_PORT}" in text and "RecoveryVm" not in text
    bad = dr("--failover", "test", "--plan", "nope")
    assert bad.exit_code == 1 and bad.stderr.startswith("dr: error:") and "dr:failover_plan" in bad.stderr
    plan_json = tmp_path / "plan.json"
    plan_json.write_text(runner.invoke(cli, ["plan", spec, "--format", "json"]).stdout)
    again = json.loads(dr("--format", "json", "--plan-json", str(plan_json)).stdout)
    assert again["counts"] == json.loads(dr("--format", "json").stdout)["counts"]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    refused = dr("--plan-json", str(broken))
    assert refused.exit_code == 2 and "dr plan FILE --format json" in refused.stderr
