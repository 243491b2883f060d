"""The example estates the stack tests run, and their plans."""

from __future__ import annotations

from pathlib import Path

from dr.azure.contract import StackPlan, plan_of
from dr.model import Estate
from dr.validate import load_valid

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "sharepoint": ROOT / "examples" / "sharepoint" / "dr.yaml",
    "linux-estate": ROOT / "examples" / "linux-estate" / "dr.yaml",
}


def estate_and_plan(name: str) -> tuple[Estate, StackPlan]:
    """A bundled example and its plan; both examples must plan cleanly (a refusal fails the test)."""
    estate, _ = load_valid(EXAMPLES[name])
    return estate, plan_of(estate)
