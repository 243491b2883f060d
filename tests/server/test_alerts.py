"""Alerts against a real SMTP server (aiosmtpd) and a real HTTP webhook receiver, both on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from dr.model import Estate, Notifications, Smtp
from dr.server import alerts
from dr.server.schemas import (
    AgentDisk,
    AgentHeartbeat,
    ProcessServerHeartbeat,
    RegisterRequest,
)
from dr.server.service import ConfigServer, Principal
from dr.server.store import Store
from tests.server.conftest import PASSPHRASE, Clock, free_port, make_server


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def subjects(self) -> list[str]:
        with self._lock:
            return [str(m["Subject"]) for m in self.messages]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


class Hooks:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []


@pytest.fixture
def webhook() -> Iterator[tuple[Hooks, str]]:
    hooks = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hooks.calls.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield hooks, f"http://127.0.0.1:{httpd.server_address[1]}/dr-alerts"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _estate(sharepoint: Estate, smtp_port: int, webhook_url: str | None) -> Estate:
    notifications = Notifications(
        email=["dr-team@contoso.com", "oncall@contoso.com"],
        smtp=Smtp.model_validate({"host": "127.0.0.1", "port": smtp_port, "from": "dr@contoso.com"}),
        webhook=webhook_url,
    )
    return sharepoint.model_copy(update={"notifications": notifications})


def _setup(store: Store, estate: Estate, clock: Clock) -> tuple[ConfigServer, alerts.Dispatcher]:
    server = make_server(store, estate, clock, heartbeat_timeout_s=300)
    for name, role, machine in [("agent-dc01", "agent", "dc01"), ("agent-sql01", "agent", "sql01"),
                                ("ps01", "process_server", None)]:
        server.register(RegisterRequest(passphrase=PASSPHRASE, name=name, role=role, machine=machine))  # type: ignore[arg-type]
    return server, alerts.Dispatcher.from_spec(estate.notifications)


def _beat(server: ConfigServer, name: str, **fields: Any) -> None:
    if name.startswith("agent-"):
        server.heartbeat(Principal(name=name, role="agent"), AgentHeartbeat(**fields))
    else:
        server.heartbeat(Principal(name=name, role="process_server"), ProcessServerHeartbeat(**fields))


def _all_well(server: ConfigServer) -> None:
    _beat(server, "agent-dc01", power_state="on", disks=[AgentDisk(stream="dc01.c", rpo_seconds=20)])
    _beat(server, "agent-sql01", power_state="on",
          disks=[AgentDisk(stream=f"sql01.{d}", rpo_seconds=20) for d in ("c", "data", "log")])
    _beat(server, "ps01", cache_free_fraction=0.9)


def test_each_condition_sends_exactly_one_email_and_clears(
    store: Store, sharepoint: Estate, clock: Clock, smtp: tuple[Inbox, int], webhook: tuple[Hooks, str]
) -> None:
    inbox, port = smtp
    hooks, url = webhook
    server, dispatcher = _setup(store, _estate(sharepoint, port, url), clock)
    _all_well(server)
    assert alerts.evaluate(server, dispatcher).raised == ()
    assert inbox.subjects() == []

    # Three conditions at once: an RPO breach, a powered-off machine and a nearly full cache.
    _beat(server, "agent-sql01", power_state="on",
          disks=[AgentDisk(stream="sql01.c", rpo_seconds=20), AgentDisk(stream="sql01.data", rpo_seconds=20 * 60),
                 AgentDisk(stream="sql01.log", rpo_seconds=20)])
    _beat(server, "agent-dc01", power_state="off", disks=[AgentDisk(stream="dc01.c", rpo_seconds=20)])
    _beat(server, "ps01", cache_free_fraction=0.10)
    first = alerts.evaluate(server, dispatcher)
    assert sorted(first.raised) == [("cache_critical", "ps01"), ("machine_off", "dc01"), ("rpo_missed", "sql01")]

    # The conditions persist through many more evaluations: no storm.
    for _ in range(5):
        clock.advance(30)
        _beat(server, "agent-sql01", disks=[AgentDisk(stream="sql01.data", rpo_seconds=25 * 60)])
        _beat(server, "agent-dc01", power_state="off")
        _beat(server, "ps01", cache_free_fraction=0.05)
        assert alerts.evaluate(server, dispatcher).raised == ()

    subjects = sorted(inbox.subjects())
    assert subjects == [
        "[dr contoso-sharepoint] CRITICAL cache_critical: ps01",
        "[dr contoso-sharepoint] WARNING machine_off: dc01",
        "[dr contoso-sharepoint] WARNING rpo_missed: sql01",
    ]
    rpo_mail = next(m for m in inbox.messages if "rpo_missed" in str(m["Subject"]))
    assert rpo_mail["To"] == "dr-team@contoso.com, oncall@contoso.com"
    assert "disk data exceeds the threshold of 900 s" in rpo_mail.get_payload()
    assert sorted((c["kind"], c["state"]) for c in hooks.calls) == [
        ("cache_critical", "raised"), ("machine_off", "raised"), ("rpo_missed", "raised")]

    # Everything recovers: each alert clears once (webhook told, no email), the store is empty.
    _all_well(server)
    cleared = alerts.evaluate(server, dispatcher)
    assert sorted(cleared.cleared) == [("cache_critical", "ps01"), ("machine_off", "dc01"), ("rpo_missed", "sql01")]
    assert alerts.evaluate(server, dispatcher) == alerts.Transitions(raised=(), cleared=())
    assert len(inbox.messages) == 3
    assert sorted(c["kind"] for c in hooks.calls if c["state"] == "cleared") == [
        "cache_critical", "machine_off", "rpo_missed"]
    assert server.overview().alerts == ()
    kinds = {e["kind"] for e in server.events()}
    assert {"rpo_missed", "rpo_missed_cleared", "machine_off_cleared", "cache_critical_cleared"} <= kinds

    # A new breach after clearing is a new incident: one more email.
    _beat(server, "agent-sql01", disks=[AgentDisk(stream="sql01.log", rpo_seconds=16 * 60)])
    assert alerts.evaluate(server, dispatcher).raised == (("rpo_missed", "sql01"),)
    assert len(inbox.messages) == 4


def test_cache_warning_then_critical_and_lost_heartbeats(
    sqlite_store: Store, sharepoint: Estate, clock: Clock, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    server, dispatcher = _setup(sqlite_store, _estate(sharepoint, port, None), clock)
    _all_well(server)
    _beat(server, "ps01", cache_free_fraction=0.28)
    assert alerts.evaluate(server, dispatcher).raised == (("cache_warning", "ps01"),)
    _beat(server, "ps01", cache_free_fraction=0.2)
    moved = alerts.evaluate(server, dispatcher)
    assert moved.raised == (("cache_critical", "ps01"),) and moved.cleared == (("cache_warning", "ps01"),)

    # Nobody sends heartbeats for longer than the timeout: one alert per silent component; and the
    # vault is now older than the timeout, so the machines whose agents never reported are Critical too.
    clock.advance(301)
    lost = alerts.evaluate(server, dispatcher)
    assert sorted(lost.raised) == [("health_critical", "app01"), ("health_critical", "web01"),
                                   ("health_critical", "web02"), ("heartbeat_lost", "dc01"),
                                   ("heartbeat_lost", "ps01"), ("heartbeat_lost", "sql01")]
    assert alerts.evaluate(server, dispatcher).raised == ()
    assert len([s for s in inbox.subjects() if "heartbeat_lost" in s]) == 3
    assert "CRITICAL health_critical: web01" in " ".join(inbox.subjects())


def test_events_not_subscribed_are_not_sent(
    sqlite_store: Store, sharepoint: Estate, clock: Clock, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    estate = _estate(sharepoint, port, None)
    estate = estate.model_copy(update={"notifications": estate.notifications.model_copy(
        update={"events": ["rpo_missed"]})})
    server, dispatcher = _setup(sqlite_store, estate, clock)
    _all_well(server)
    _beat(server, "agent-dc01", power_state="off")
    assert alerts.evaluate(server, dispatcher).raised == (("machine_off", "dc01"),)
    assert inbox.subjects() == []  # raised and shown, but not mailed


def test_an_unreachable_smtp_server_is_an_event_not_a_crash(
    sqlite_store: Store, sharepoint: Estate, clock: Clock
) -> None:
    server, dispatcher = _setup(sqlite_store, _estate(sharepoint, free_port(), None), clock)
    _all_well(server)
    _beat(server, "agent-dc01", power_state="off")
    assert alerts.evaluate(server, dispatcher).raised == (("machine_off", "dc01"),)
    failed = [e for e in server.events() if e["kind"] == "notification_failed"]
    assert failed and "EmailNotifier could not send machine_off" in failed[0]["message"]


def test_a_failed_email_is_retried_with_a_growing_delay(sqlite_store: Store, sharepoint: Estate, clock: Clock) -> None:
    """The SMTP relay is down when the alert opens; the alert loop's retries deliver it once it is back."""
    port = free_port()
    server, dispatcher = _setup(sqlite_store, _estate(sharepoint, port, None), clock)
    _all_well(server)
    _beat(server, "agent-dc01", power_state="off")
    assert alerts.evaluate(server, dispatcher).raised == (("machine_off", "dc01"),)
    assert dispatcher.retry(server) == 0, "retried before its delay"
    clock.advance(alerts.RETRY_BASE_S)
    assert dispatcher.retry(server) == 0  # still down: tried again, the next delay doubles
    waits = [r["next_try"] - clock.now for r in sqlite_store.query("SELECT next_try FROM outbox")]
    assert waits == [2 * alerts.RETRY_BASE_S]

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        clock.advance(alerts.RETRY_BASE_S)
        assert dispatcher.retry(server) == 0, "sent before the doubled delay"
        clock.advance(alerts.RETRY_BASE_S)
        assert dispatcher.retry(server) == 1
        assert inbox.subjects() == ["[dr contoso-sharepoint] WARNING machine_off: dc01"]
    finally:
        controller.stop()
    assert sqlite_store.query("SELECT id FROM outbox") == []
    kinds = [e["kind"] for e in server.events(limit=500)]
    assert kinds.count("notification_failed") == 2 and "notification_sent" in kinds
