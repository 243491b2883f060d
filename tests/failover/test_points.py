"""Recovery point choice: per machine (all disks at one bookmark) and one multi-VM point per plan."""

from __future__ import annotations

import pytest

from dr.errors import DrError
from dr.failover.points import Choice, NoRecoveryPoint, Point, choose


def p(pid: str, t: float, kind: str = "crash", group: str | None = None, processed: bool = True) -> Point:
    return Point(point_id=pid, time=t, kind=kind, group_id=group, processed=processed)  # type: ignore[arg-type]


CATALOG = {
    "sql01": {
        "c": [p("s1", 100, "app", "g1"), p("s2", 200, "crash", "g2"), p("s3", 300, "crash", None, processed=False)],
        # The data disk lacks s3 (not yet received there): s3 is not a point of the machine.
        "data": [p("s1", 100, "app", "g1"), p("s2", 200, "crash", "g2")],
    },
    "web01": {
        "c": [p("s1", 101, "app", "g1"), p("w2", 150, "app"), p("w3", 250, "crash", "g3"),
              p("w4", 310, "crash", None, processed=False)],
    },
}


def chosen(choice: str) -> dict[str, str]:
    return {m: c.point_id for m, c in choose(CATALOG, Choice.parse(choice)).items()}


def test_each_choice() -> None:
    assert chosen("latest") == {"sql01": "s2", "web01": "w4"}
    assert chosen("latest-processed") == {"sql01": "s2", "web01": "w3"}
    assert chosen("latest-app") == {"sql01": "s1", "web01": "w2"}
    # g1 is the only group both machines share (g2 and g3 are each one machine's).
    multi = choose(CATALOG, Choice.parse("latest-multi-vm"))
    assert {m: (c.point_id, c.group_id) for m, c in multi.items()} == {"sql01": ("s1", "g1"), "web01": ("s1", "g1")}
    assert chosen("1970-01-01T00:02:30Z") == {"sql01": "s1", "web01": "w2"}


def test_multi_vm_points_of_the_coordinator_share_one_group_id() -> None:
    # The capture coordinator marks every stream with one id and the protection group as group id;
    # web01 was not connected for m3, so m2 is the newest point of the whole group.
    catalog = {
        "sql01": {"c": [p("m1", 100, group="sp"), p("m2", 200, group="sp"), p("m3", 300, group="sp")]},
        "web01": {"c": [p("m1", 100, group="sp"), p("m2", 201, group="sp"), p("w9", 301)]},
    }
    multi = choose(catalog, Choice.parse("latest-multi-vm"))
    assert {m: (c.point_id, c.group_id) for m, c in multi.items()} == {"sql01": ("m2", "sp"), "web01": ("m2", "sp")}


def test_no_point_says_why() -> None:
    with pytest.raises(NoRecoveryPoint, match=r"web01 has no .* recovery point .*choose another --point"):
        chosen("1970-01-01T00:01:40Z")
    with pytest.raises(NoRecoveryPoint, match=r"no multi-VM consistent point .*multi_vm_consistency"):
        choose({"a": {"c": [p("1", 1, group="x")]}, "b": {"c": [p("2", 1, group="y")]}},
               Choice.parse("latest-multi-vm"))
    with pytest.raises(NoRecoveryPoint, match=r"a has no recovery point common to all its disks"):
        choose({"a": {"c": [p("1", 1)], "d": [p("2", 1)]}}, Choice.parse("latest"))


def test_a_bad_choice_is_a_user_error() -> None:
    with pytest.raises(DrError, match=r"--point expects one of latest, latest-processed"):
        Choice.parse("yesterday")
    assert str(Choice.parse("2026-11-24T23:00:00Z")) == "2026-11-24T23:00:00Z"
    assert str(Choice.parse("2026-11-24T23:00:00")) == "2026-11-24T23:00:00Z"
