"""Globally unique names are unique per deployment (subscription + stack) and stable for one."""

from __future__ import annotations

from dataclasses import replace

import pytest
from stack_examples import estate_and_plan

from dr.azure import naming
from dr.model import EnvRef
from dr.plan import make_plan
from dr.preview import preview, preview_options, run

SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-222222222222"


def test_subscription_key_resolves_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = EnvRef(env="DR_TEST_SUBSCRIPTION")
    monkeypatch.delenv("DR_TEST_SUBSCRIPTION", raising=False)
    assert naming.subscription_key(ref) == "$DR_TEST_SUBSCRIPTION"  # offline: the reference, stable
    monkeypatch.setenv("DR_TEST_SUBSCRIPTION", SUB_A.upper())
    assert naming.subscription_key(ref) == SUB_A
    assert naming.subscription_key(SUB_B) == SUB_B


def test_names_differ_per_subscription_and_stack_and_stay_stable() -> None:
    a, b, a_other_stack = naming.Scope(SUB_A, "prod"), naming.Scope(SUB_B, "prod"), naming.Scope(SUB_A, "test")
    kv = {s: naming.key_vault_name("contoso-sharepoint", "contoso-dr", s) for s in (a, b, a_other_stack)}
    assert len(set(kv.values())) == 3 and all(len(n) <= naming.KEYVAULT_NAME_MAX for n in kv.values())
    assert kv[a] == naming.key_vault_name("contoso-sharepoint", "contoso-dr", naming.Scope(SUB_A, "prod"))
    guids = {naming.role_assignment_id(s, "e", "cs01-kv-secrets", "role") for s in (a, b, a_other_stack)}
    assert len(guids) == 3
    label = naming.dns_label(a, "contoso-sharepoint", "sharepoint")
    assert label.startswith("contoso-sharepoint-sharepoint-") and len(label) <= naming.DNS_LABEL_MAX
    assert label != naming.dns_label(b, "contoso-sharepoint", "sharepoint")
    long = naming.dns_label(a, "x" * 80)
    assert len(long) == naming.DNS_LABEL_MAX and long == naming.dns_label(a, "x" * 80)


def test_storage_accounts_differ_per_subscription(monkeypatch: pytest.MonkeyPatch) -> None:
    estate, _ = estate_and_plan("sharepoint")
    names = []
    for sub in (SUB_A, SUB_B, SUB_A):
        monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", sub)
        names.append([a.name for a in make_plan(estate).storage_accounts])
    assert names[0] == names[2] and not set(names[0]) & set(names[1])


def test_preview_mixes_the_stack_into_role_assignments_and_dns() -> None:
    estate, plan = estate_and_plan("sharepoint")

    results = {}
    for stack in ("prod", "test"):
        results[stack] = run(estate, plan, replace(preview_options(estate, plan), stack=stack), stack=stack)
    guids = {s: {r.inputs["roleAssignmentName"] for r in res.of_type(":authorization:RoleAssignment")}
             for s, res in results.items()}
    assert guids["prod"] and not guids["prod"] & guids["test"]
    profiles = {s: [r.inputs["dnsConfig"]["relativeName"] for r in res.of_type(":trafficmanager:Profile")]
                for s, res in results.items()}
    assert profiles["prod"] != profiles["test"]
    assert preview(estate, plan).of_type(":keyvault:Vault")
