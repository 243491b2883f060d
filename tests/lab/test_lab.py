"""The lab's parts that need no root: names and addresses, the workload's control protocol, seed data,
the lab's placement of disks in a rendered agent.toml, and `dr replica configs --address`."""

from __future__ import annotations

import hashlib
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dr.cli import cli
from dr.lab import configs, disks
from dr.lab.errors import LabError
from dr.lab.topology import LAB_ROOT, NodeKind, topology
from dr.lab.workload import Settings, Workload, file_manifest, serve
from dr.plan import make_plan
from dr.validate import load_valid

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [REPO / "examples/linux-estate/dr.yaml", REPO / "examples/sharepoint/dr.yaml"]


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.parent.name)
def test_every_node_has_its_own_namespace_address_and_short_interface_names(spec: Path) -> None:
    estate, _ = load_valid(spec)
    plan = make_plan(estate)
    topo = topology(estate, plan)
    names = [n.name for n in topo.nodes]
    assert sorted(names) == sorted({"azure", *(m.name for m in estate.machines),
                                    *(p.name for p in plan.process_servers), *(m.name for m in plan.master_targets)})
    assert len({n.ip for n in topo.nodes}) == len(topo.nodes)
    assert len({n.netns for n in topo.nodes}) == len(topo.nodes)
    assert all(n.netns.startswith(topo.netns_prefix) for n in topo.nodes)
    assert all(len(i) <= 15 for n in topo.nodes for i in (n.veth, n.peer, topo.bridge))
    hosts = topo.hosts()
    assert hosts[topo.config_server] == topo.azure.ip
    for m in estate.machines:
        node = topo.node(m.name)
        assert node.kind is NodeKind.SOURCE and hosts[m.name] == node.ip
        assert [d.name for d in node.disks] == [d.name for d in m.disks]
    # another root is another lab: other names, so a test's lab never meets the user's
    other = topology(estate, plan, root=Path("/tmp/elsewhere"))
    assert other.key != topo.key and topo.directory == LAB_ROOT / estate.estate
    with pytest.raises(LabError, match="no machine or server named"):
        topo.node("nope")


def test_seed_data_is_deterministic_and_differs_per_disk() -> None:
    a = disks.seed_files("e", "m1", "c")
    assert a == disks.seed_files("e", "m1", "c")
    assert a != disks.seed_files("e", "m1", "data")
    assert all(rel.startswith(disks.SEED_DIR + "/") for rel in a)
    assert sum(len(v) for v in a.values()) > 100_000


@pytest.mark.parametrize("text,size", [("64M", 64 << 20), ("1G", 1 << 30), ("32MiB", 32 << 20), ("16m", 16 << 20)])
def test_disk_size(text: str, size: int) -> None:
    assert disks.parse_size(text) == size


@pytest.mark.parametrize("text", ["1M", "lots", ""])
def test_disk_size_refused(text: str) -> None:
    with pytest.raises(LabError, match="--disk-size"):
        disks.parse_size(text)


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[tuple[Workload, dict[str, Path]]]:
    mounts = {"c": tmp_path / "c", "data": tmp_path / "data"}
    for m in mounts.values():
        m.mkdir()
    (mounts["c"] / "seed").mkdir()
    (mounts["c"] / "seed" / "a.bin").write_bytes(b"before any agent")
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(Settings(tmp_path / "ctl", mounts, 0.01, 7), stop), daemon=True)
    thread.start()
    try:
        yield Workload(tmp_path / "ctl", machine="m1"), mounts
    finally:
        stop.set()
        thread.join(10)


def test_workload_pauses_reports_the_files_it_holds_and_resumes(workload: tuple[Workload, dict[str, Path]]) -> None:
    client, mounts = workload
    wait = threading.Event()
    for _ in range(200):  # until it has written on both disks
        if all(any((m / "workload").glob("file*.bin")) for m in mounts.values()):
            break
        wait.wait(0.05)
    client.pause()
    held = file_manifest(mounts)
    manifest = client.manifest()
    assert manifest == held                       # nothing written while paused
    assert manifest["c"]["seed/a.bin"] == hashlib.sha256(b"before any agent").hexdigest()
    assert any(p.startswith("workload/") for p in manifest["data"])
    client.resume()
    for _ in range(200):
        if file_manifest(mounts) != held:
            break
        wait.wait(0.05)
    assert file_manifest(mounts) != held          # writing again
    status = client.status()
    assert status is not None and status["writes"] > 0


def test_a_workload_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="did not answer 'pause'"):
        Workload(tmp_path / "ctl", machine="m1").pause(timeout=0.3)


def test_the_labs_disks_are_rendered_as_in_use_disks_at_their_lab_places(tmp_path: Path) -> None:
    estate, _ = load_valid(REPO / "examples/sharepoint/dr.yaml")   # no file systems listed in the spec
    plan = make_plan(estate)
    placements = {("sql01", "c"): ("/dev/loop3", "/lab/sql01/c"), ("sql01", "data"): ("/dev/loop4", "/lab/sql01/d")}
    configs.render(estate, plan, addresses={"ps01": "10.213.9.10"}, placements=placements, out=tmp_path)
    agent = tomllib.loads((tmp_path / "sql01/agent.toml").read_text())["agent"]
    by_name = {d["name"]: d for d in agent["disks"]}
    assert (by_name["sql01.c"]["mode"], by_name["sql01.c"]["device"], by_name["sql01.c"]["mount_points"]) == (
        "tracking", "/dev/loop3", ["/lab/sql01/c"])
    assert by_name["sql01.data"]["device"] == "/dev/loop4"
    assert by_name["sql01.log"]["mode"] == "splitter"          # not placed: as the spec says
    assert agent["process_servers"][0] == "10.213.9.10:9443"
    assert estate.machine("sql01").disks[0].device is None     # the spec's model is untouched


def test_replica_configs_take_the_labs_addresses(tmp_path: Path) -> None:
    spec = REPO / "examples/sharepoint/dr.yaml"
    result = CliRunner().invoke(cli, ["replica", "configs", str(spec), "--out", str(tmp_path),
                                      "--address", "ps01=10.213.9.10"])
    assert result.exit_code == 0, result.output
    ps = tomllib.loads((tmp_path / "ps01/process-server.toml").read_text())["process_server"]
    assert ps["listen"] == "10.213.9.10:9443"
    agent = tomllib.loads((tmp_path / "sql01/agent.toml").read_text())["agent"]
    assert agent["process_servers"][0] == "10.213.9.10:9443"
    bad = CliRunner().invoke(cli, ["replica", "configs", str(spec), "--out", str(tmp_path), "--address", "ps9=1.2.3.4"])
    assert bad.exit_code == 2 and "not a machine or server" in bad.output


def test_not_root_and_a_missing_tool_are_one_line_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from dr.lab import host

    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match=r"^`dr lab up` makes network namespaces.*run it as root$"):
        host.require_root("up")
    monkeypatch.setattr(host.shutil, "which", lambda name: None)
    monkeypatch.setattr(host.os, "access", lambda path, mode: False)
    with pytest.raises(LabError, match=r"^sshd is not installed: apt-get install openssh-server"):
        host.tool("sshd")


def test_a_machine_named_azure_keeps_its_name_and_the_labs_azure_moves_aside() -> None:
    from types import SimpleNamespace as NS

    disk = NS(name="c")
    estate = NS(estate="e", machines=[NS(name="azure", site="hq", disks=[disk])],
                machine=lambda name: NS(name=name, disks=[disk]))
    plan = NS(process_servers=[NS(name="ps1", site="hq")], master_targets=[NS(name="mt1")],
              config_servers=[NS(name="e-cs01")])
    topo = topology(estate, plan)
    assert topo.node("azure").kind is NodeKind.SOURCE and topo.azure.name == "lab-azure"
    assert len({n.netns for n in topo.nodes}) == 4


def test_one_up_or_down_of_a_lab_at_a_time(tmp_path: Path) -> None:
    from dr.lab import Lab

    lab = Lab.load(REPO / "examples/sharepoint/dr.yaml", root=tmp_path)
    with lab._lock("up"), pytest.raises(LabError, match=r"another `dr lab up` or `down` .* \(up, pid \d+\)"):
        with lab._lock("down"):
            pass
