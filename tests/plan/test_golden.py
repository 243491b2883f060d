"""Golden cases: a spec.yaml and the plan worked out by hand (the arithmetic is in the spec's comments).

expected.json lists the keys that matter for the case's rule; `{stem}` stands for the storage account
name stem, recomputed in conftest.stem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dr.plan import make_plan
from dr.validate import load_valid
from tests.plan.conftest import stem, subset

CASES = Path(__file__).parent / "cases"


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "spec.yaml").exists()))
def test_golden(case: str) -> None:
    estate, findings = load_valid(CASES / case / "spec.yaml")
    assert [f for f in findings if f.severity == "error"] == []
    expected = json.loads((CASES / case / "expected.json").read_text().replace("{stem}", stem()))
    subset(expected, make_plan(estate).model_dump(mode="json"))


def test_subset_catches_a_wrong_expectation() -> None:
    plan = {"master_targets": [{"name": "a", "machines": ["m1", "m2"]}], "errors": []}
    subset({"master_targets": [{"machines": ["m1", "m2"]}]}, plan)
    for wrong in ({"master_targets": [{"machines": ["m1"]}]}, {"master_targets": [{"name": "b"}]},
                  {"master_targets": []}, {"warnings": []}):
        with pytest.raises(AssertionError):
            subset(wrong, plan)
