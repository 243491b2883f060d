"""The dashboard in headless Chromium (Debian's chromium): the DOM has the health table and events,
and the screenshot shows the health colours (decoded from the PNG, not only its size)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from dr.server.app import create_app
from dr.server.schemas import AgentDisk, AgentHeartbeat, ProcessServerHeartbeat, RegisterRequest
from dr.server.service import ConfigServer, Principal
from tests.server.conftest import PASSPHRASE, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's first start on 2 cores takes a few seconds (measured here: about 2-4 s).
CHROMIUM_TIMEOUT_S = 90
HEALTHY_RGB = (0x2D, 0x8A, 0x4E)
CRITICAL_RGB = (0xC6, 0x2F, 0x2F)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


@pytest.fixture
def live(sqlite_store: object, sharepoint: object) -> Iterator[tuple[ConfigServer, str]]:
    import time as _time

    from dr.server.store import Store

    assert isinstance(sqlite_store, Store)
    server = ConfigServer(store=sqlite_store, estate=sharepoint, clock=_time.time)  # type: ignore[arg-type]
    server.init_vault(PASSPHRASE)
    port = free_port()
    config = uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=1)
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not http.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        http.force_exit = True  # Chromium may leave keep-alive connections behind
        thread.join(timeout=10)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, timeout=CHROMIUM_TIMEOUT_S, check=True)


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into pixels: enough to check colours."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        filt = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(line)
        prev = line
    pixels = [(r[i], r[i + 1], r[i + 2]) for r in rows for i in range(0, stride, channels)]
    return width, height, pixels


def login_url(base: str, operator_token: str) -> str:
    answer = httpx.post(f"{base}/api/v1/login-links", headers={"Authorization": f"Bearer {operator_token}"})
    answer.raise_for_status()
    return base + answer.json()["path"]


def test_dashboard_shows_health_and_events_in_chromium(live: tuple[ConfigServer, str], tmp_path: Path) -> None:
    server, base = live
    # Unauthenticated: the dashboard refuses and explains how to sign in.
    refused = chromium(tmp_path, "--dump-dom", base + "/").stdout.decode()
    assert "login-link" in refused and 'id="health"' not in refused

    operator = server.register(RegisterRequest(passphrase=PASSPHRASE, name="ops", role="operator")).token
    server.register(RegisterRequest(passphrase=PASSPHRASE, name="agent-dc01", role="agent", machine="dc01"))
    server.register(RegisterRequest(passphrase=PASSPHRASE, name="ps01", role="process_server", site="hq"))
    server.heartbeat(Principal(name="agent-dc01", role="agent"),
                     AgentHeartbeat(disks=[AgentDisk(stream="dc01.c", rpo_seconds=42)]))
    server.heartbeat(Principal(name="ps01", role="process_server"), ProcessServerHeartbeat(cache_free_fraction=0.8))

    dom = chromium(tmp_path, "--dump-dom", login_url(base, operator)).stdout.decode()
    assert '<table id="health">' in dom and '<table id="events">' in dom
    dc01 = dom[dom.index('data-machine="dc01"'):]
    dc01 = dc01[:dc01.index("</tr>")]
    # The reported 42 s, aged by the seconds since the heartbeat (the RPO grows between reports).
    rpo = re.search(r'<td class="rpo">(\d+) s</td>', dc01)
    assert 'class="badge Healthy"' in dc01 and rpo is not None and 42 <= int(rpo.group(1)) < 42 + CHROMIUM_TIMEOUT_S
    sql01 = dom[dom.index('data-machine="sql01"'):]
    assert 'class="badge Critical"' in sql01[:sql01.index("</tr>")]
    assert "process server registered" in dom and "ps01" in dom

    shot = tmp_path / "dashboard.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", login_url(base, operator))
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 1600)
    colours = set(pixels)
    assert len(colours) > 50, "the screenshot is nearly blank"
    assert pixels.count(HEALTHY_RGB) > 200, "no green Healthy badge in the screenshot"
    assert pixels.count(CRITICAL_RGB) > 200, "no red Critical badge in the screenshot"
