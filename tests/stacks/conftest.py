"""Fixtures of the stack tests: each example estate with its plan."""

from __future__ import annotations

import pytest
from stack_examples import EXAMPLES, estate_and_plan

from dr.azure.contract import StackPlan
from dr.model import Estate


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def example(request: pytest.FixtureRequest) -> tuple[str, Estate, StackPlan]:
    estate, plan = estate_and_plan(request.param)
    return request.param, estate, plan
