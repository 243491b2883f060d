"""A master target's cloud-init executed for real: a fresh Debian root file system (debootstrap,
Debian's package), its `write_files` written and its `runcmd` run in a chroot inside a network
namespace. The first boot fetches its secrets from Key Vault (which refuses the first reads, as
while a role assignment applies), downloads the estate's own wheels and installs them by hash with
no index, registers with a configuration server that starts only once registration is waiting, and
starts the master target. Azure's endpoints are `azure_fakes.py` (no emulator exists for IMDS or
Key Vault); the configuration server is the product's own `dr config-server start`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trustme
from ruamel.yaml import YAML
from stack_examples import EXAMPLES, estate_and_plan

from dr.azure import bootstrap, wheels
from tests.conftest import ROOT, require_root

MIRROR = "http://deb.debian.org/debian"  # Debian's own mirror (the CI machines' apt source)
SUITE = "bookworm"  # Debian 12: python3 is 3.11, the oldest Python dr supports
BOOKWORM = wheels.Target("linux", "3.11", "cp311", ("manylinux_2_28_x86_64", "manylinux2014_x86_64"))
KEY_VAULT, ACCOUNT = "kvfirstboot", "acctfirstboot"
CS = "127.0.0.3"
PASSPHRASE = "first boot test passphrase"


def _wait(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.root
def test_master_target_cloud_init_boots_a_debian_root(tmp_path: Path) -> None:
    require_root("debootstrap", "ip", "unshare", "chroot", devices=())
    root = tmp_path / "root"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", SUITE,
                    str(root), MIRROR], check=True, capture_output=True, timeout=900)

    # The estate's wheels for this root's Python, where the stack would publish them.
    project = wheels.build(ROOT, tmp_path / "wheels")
    house = wheels.collect(project, "master-target", BOOKWORM, tmp_path / "blobs" / bootstrap.PACKAGES_CONTAINER)
    estate, plan = estate_and_plan("linux-estate")
    mts = next(m for m in plan.master_targets if m.os == "linux")
    reg = bootstrap.Registration(f"https://{CS}:{bootstrap.CONTROL_PORT}", bootstrap.passphrase_secret_uri(KEY_VAULT))
    packages = bootstrap.packages_for([house], ACCOUNT, "linux", "master-target", project[0].name.split("-")[1])
    text = bootstrap.render_master_target(estate, plan, mts, reg, bootstrap.data_path_configs(estate), packages,
                                          "127.0.0.1")
    doc = YAML(typ="safe").load(text)

    # cloud-init's write_files, as cloud-init writes them.
    for item in doc["write_files"]:
        path = root / item["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        content = item["content"]
        path.write_bytes(base64.b64decode(content) if item.get("encoding") == "b64" else content.encode())
        path.chmod(int(item["permissions"], 8))
    boot = json.loads((root / "etc/dr/bootstrap.json").read_text())

    # The machine around it: Azure's names resolve to the fakes, their CA is trusted, and a
    # `systemctl` that runs units with the product's own supervisor (a chroot has no systemd).
    ca = trustme.CA()
    cert = ca.issue_cert(f"{KEY_VAULT}.vault.azure.net", f"{ACCOUNT}.blob.core.windows.net")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "fake.pem"))
    with open(root / "etc/ssl/certs/ca-certificates.crt", "ab") as bundle:
        bundle.write(ca.cert_pem.bytes())
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.0.2 {KEY_VAULT}.vault.azure.net "
                                    f"{ACCOUNT}.blob.core.windows.net\n")
    shim = root / "usr/local/bin/systemctl"
    shim.write_text('#!/bin/sh\ncase "$1" in\n  daemon-reload) exit 0 ;;\n  enable) unit="$3"\n'
                    '    exec /usr/local/bin/dr-agent supervise --unit "/etc/systemd/system/$unit" --detach '
                    '--pidfile "/run/$unit.pid" --log "/var/log/$unit.log" ;;\nesac\nexit 1\n')
    shim.chmod(0o755)

    namespace = f"drfb{os.getpid()}"
    secrets = {item["uri"].rsplit("/", 1)[1]: "UseDevelopmentStorage=true" for item in boot["secrets"]}
    secrets["registration-passphrase"] = PASSPHRASE
    fake_config = tmp_path / "fake.json"
    fake_config.write_text(json.dumps({
        "imds_host": "169.254.169.254", "https_host": "127.0.0.2", "cert": str(tmp_path / "fake.pem"),
        "key": str(tmp_path / "fake.pem"), "secrets": secrets, "deny_first": 2, "blobs": str(tmp_path / "blobs"),
        "log": str(tmp_path / "fake.log"), "ready": str(tmp_path / "fake.ready"),
    }))
    (tmp_path / "passphrase").write_text(PASSPHRASE)
    procs: list[subprocess.Popen[str]] = []
    output: list[str] = []
    try:
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        netns = ["ip", "netns", "exec", namespace]
        subprocess.run([*netns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*netns, "ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], check=True)
        procs.append(subprocess.Popen([*netns, sys.executable, str(Path(__file__).parent / "azure_fakes.py"),
                                       str(fake_config)], text=True))
        _wait("the Azure fakes", (tmp_path / "fake.ready").exists, 30)

        first_boot = subprocess.Popen(
            [*netns, "unshare", "--mount", "--propagation", "private", "sh", "-ec",
             f"mount --bind /dev {root}/dev; mount -t proc proc {root}/proc; "
             f"exec chroot {root} " + " ".join(doc["runcmd"][0])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(first_boot)
        registering = threading.Event()

        def read() -> None:
            assert first_boot.stdout is not None
            for line in first_boot.stdout:
                output.append(line)
                if "registering with the configuration server" in line:
                    registering.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert registering.wait(600), "".join(output)
        time.sleep(5)  # the configuration server starts late: registration keeps trying meanwhile
        procs.append(subprocess.Popen(
            [*netns, sys.executable, "-m", "dr", "config-server", "start", str(EXAMPLES["linux-estate"]),
             "--listen", f"{CS}:{bootstrap.CONTROL_PORT}", "--state", str(tmp_path / "state.db"),
             "--passphrase-file", str(tmp_path / "passphrase")],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True))
        assert first_boot.wait(600) == 0, "".join(output)
        reader.join(10)
        log = "".join(output)
        assert "waiting for Key Vault secret" in log and "dr-bootstrap: done" in log, log
        assert f"installing {len(house.wheels)} wheels by hash (no index)" in log
        assert "waiting for the configuration server" in log.split("registering with the configuration server")[1]

        identity = root / "etc/dr-agent/identity"
        assert all((identity / f).stat().st_size > 0 for f in ("cert.pem", "key.pem", "ca.pem", "token"))
        assert (identity / "token").stat().st_mode & 0o077 == 0
        assert "DR_STORAGE_" in (root / "etc/dr-agent/env").read_text()
        installed = sorted(p.name.split("-")[0].lower() for p in
                           (root / "opt/dr-agent/lib/python3.11/site-packages").glob("*.dist-info"))
        venv_own = {"pip", "setuptools"}  # what `python3 -m venv` puts in every venv
        published = sorted(w.name.split("-")[0].lower() for w in house.wheels)
        assert [n for n in installed if n not in venv_own] == published
        fetched = (tmp_path / "fake.log").read_text()
        assert all(f"/packages/linux/master-target/{w.name}" in fetched for w in house.wheels)

        def listening() -> bool:
            probe = subprocess.run([*netns, sys.executable, "-c", "import socket; socket.create_connection("
                                    f"('127.0.0.1', {bootstrap.DATA_PORT}), 2).close()"], capture_output=True)
            return probe.returncode == 0

        _wait("the master target on its data port", listening, 60)
    finally:
        pidfile = root / "run/dr-master-target.service.pid"
        if pidfile.exists():
            with_suppress_kill(int(pidfile.read_text().strip()))
        for proc in reversed(procs):
            if proc.poll() is None:
                with_suppress_kill(proc.pid, group=proc is procs[1] if len(procs) > 1 else False)
                proc.wait(30)
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        shutil.rmtree(root, ignore_errors=True)


def with_suppress_kill(pid: int, *, group: bool = False) -> None:
    try:
        os.killpg(pid, signal.SIGTERM) if group else os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
