"""A multi-VM group with a member that cannot take points, run as deployed (`dr-agent agent` and
`dr-agent process-server` processes): the other members keep taking their own crash-consistent
points (their RPO stays bounded), and the group's multi-VM points resume by themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_harness import MIB, Estate, need_root, wait_for
from pipeline_harness import TcpProxy

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_a_member_that_cannot_take_points_does_not_stop_the_others_points(tmp_path: Path, pki: Any) -> None:
    need_root()
    groups = ('\n[[process_server.groups]]\nname = "erp"\nmembers = ["web01", "db01"]\n'
              'crash_consistent_every_s = 1\napp_consistent_every_s = 3600\n')
    estate = Estate(tmp_path, pki, ps_extra=groups)
    estate.start()
    link = TcpProxy(estate.ps_port)  # db01's data link: cut, so its initial sync cannot finish
    link.cut()
    try:
        db01 = pki.agent_for("db01")
        agents = {}
        for name, identity, ps_port in (("web01", pki.agent, estate.ps_port), ("db01", db01, link.port)):
            d = estate.disk(f"{name}-sdb", 16 * MIB)
            d.mount()
            config = estate.agent_config(
                name, [f'name = "{name}.sdb"\nmode = "tracking"\ndevice = "{d.dev}"\nmount_points = ["{d.mnt}"]'],
                identity=identity, crash_consistent_every_s=4, multi_vm_group="erp",
                coordinator=f"127.0.0.1:{estate.ps_port}", reconnect_initial_s=0.2, reconnect_max_s=1)
            config.write_text(config.read_text().replace(f'process_servers = ["127.0.0.1:{estate.ps_port}"]',
                                                         f'process_servers = ["127.0.0.1:{ps_port}"]'))
            agents[name] = estate.start_agent(config)
        # The group is complete (both joined its coordinator), and its points fail: db01 cannot pause.
        wait_for(lambda: "could not pause for group point" in estate.agent_log("db01"), 60,
                 "a group point db01 cannot take", agent=agents["db01"])
        assert estate.points("db01.sdb") == []
        # web01 takes its own crash-consistent points meanwhile (no group id): its RPO stays bounded.
        wait_for(lambda: len([p for p in estate.points("web01.sdb") if not p.group_id]) >= 2, 90,
                 "two points of web01's own while the group's fail", agent=agents["web01"])
        assert all(p.kind == "crash" for p in estate.points("web01.sdb"))
        assert "taking this machine's own crash-consistent points" in estate.agent_log("web01")

        link.restore()  # db01's link heals: it syncs, and the group's points resume by themselves
        wait_for(lambda: {p.id for p in estate.points("web01.sdb") if p.group_id == "erp"}
                 & {p.id for p in estate.points("db01.sdb") if p.group_id == "erp"}, 120,
                 "a multi-VM point common to both machines", agent=agents["db01"])
        wait_for(lambda: "multi-VM points land again" in estate.agent_log("web01"), 30,
                 "web01 to stop its own points", agent=agents["web01"])
    finally:
        estate.close()
        link.close()
