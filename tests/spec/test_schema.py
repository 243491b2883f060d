"""`dr schema` is a JSON Schema that accepts the examples and refuses what the model refuses."""

from __future__ import annotations

import json

import jsonschema
import pytest

from dr.loader import load_document
from tests.conftest import ROOT, run_dr


@pytest.fixture(scope="module")
def schema() -> dict[str, object]:
    result = run_dr("schema")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(data)
    return data


@pytest.mark.parametrize("example", ["examples/sharepoint/dr.yaml", "examples/linux-estate/dr.yaml",
                                     "examples/linux-estate/inventory.yaml"])
def test_examples_validate_against_the_schema(schema: dict[str, object], example: str) -> None:
    data = load_document(ROOT / example).data
    if "estate" not in data:  # an include: only lists; validate it as part of a whole estate
        base = load_document(ROOT / "examples/sharepoint/dr.yaml").data
        data = {**base, "machines": data["machines"]}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    assert errors == [], [e.message for e in errors]


@pytest.mark.parametrize("change", [
    ("connectivity", "vpm"), ("unknown", "key"), ("quota", {"vcpus": -1}), ("storage_redundancy", "XRS"),
])
def test_schema_refuses_what_the_model_refuses(schema: dict[str, object], change: tuple[str, object]) -> None:
    data = load_document(ROOT / "examples/sharepoint/dr.yaml").data
    key, value = change
    data["azure"] = {**data["azure"], key: value}
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data)), change


def test_durations_and_references_in_the_schema(schema: dict[str, object]) -> None:
    data = load_document(ROOT / "examples/sharepoint/dr.yaml").data
    data["protection_groups"][0]["policy"]["rpo_threshold"] = "15 minutes"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    data["protection_groups"][0]["policy"]["rpo_threshold"] = "1h30m"
    data["sites"][0]["vcenter"]["password"] = {"file": "/etc/dr/pw"}
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data)) == []
