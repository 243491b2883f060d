"""Alerts: conditions read from health, raised once, cleared once, sent by email (SMTP) and webhook.

A condition is (kind, subject), e.g. ("rpo_missed", "sql01"). `evaluate` compares the conditions
that hold now with the alerts already open in the store: a new condition opens an alert and is
notified once; a condition that still holds sends nothing more (no storms); one that stopped holding
closes its alert (an event, and a `cleared` webhook call; no email, so an inbox gets one message per
incident). Opening is an insert that only one evaluator can win, so two servers on one PostgreSQL
store do not both send.

The RPO threshold is an alert, never a limit (as in ASR): replication goes on whatever the RPO.
`failover_failed` is raised by the recovery-plan runner for one job and cleared when it succeeds.
A machine or server that is Critical for a reason no other condition covers (an agent that never
reported, once the vault is older than the heartbeat timeout) raises `health_critical`.

A notification that cannot be sent (SMTP or webhook away) waits in the store's outbox and is tried
again with a doubling delay (RETRY_BASE_S up to RETRY_MAX_S, RETRY_ATTEMPTS tries in all) by the
alert loop; each failure and the final give-up are events.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, Protocol

from dr.model import Notifications, Smtp
from dr.secrets import resolve
from dr.server.service import ConfigServer

Severity = Literal["info", "warning", "critical"]
# Webhook and SMTP calls give up after this long (seconds; our choice: an alert loop must not hang).
SEND_TIMEOUT_S = 10.0
# Conditions evaluated from health (failover_failed is raised by the runner, not here).
HEALTH_KINDS = ("rpo_missed", "machine_off", "cache_warning", "cache_critical", "heartbeat_lost", "health_critical")
# Retries of a notification that failed (seconds; our choice: 1 min doubling to 1 h, 8 tries, so an
# SMTP relay down for a few hours still delivers).
RETRY_BASE_S = 60.0
RETRY_MAX_S = 3600.0
RETRY_ATTEMPTS = 8


@dataclass(frozen=True, kw_only=True)
class Alert:
    kind: str
    subject: str
    severity: Severity
    message: str
    estate: str
    time: float


class Notifier(Protocol):
    def send(self, alert: Alert, state: Literal["raised", "cleared"]) -> None: ...


@dataclass(frozen=True, kw_only=True)
class EmailNotifier:
    smtp: Smtp
    recipients: tuple[str, ...]

    def send(self, alert: Alert, state: Literal["raised", "cleared"]) -> None:
        if state != "raised" or not self.recipients:
            return
        message = EmailMessage()
        message["From"] = self.smtp.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = f"[dr {alert.estate}] {alert.severity.upper()} {alert.kind}: {alert.subject}"
        message.set_content(
            f"{alert.message}\n\nEstate: {alert.estate}\nCondition: {alert.kind} on {alert.subject}\n"
            "You get one message per condition; it is not repeated until the condition clears and "
            "returns. `dr status` shows the estate's health.\n"
        )
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=SEND_TIMEOUT_S) as client:
            if self.smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if self.smtp.user and self.smtp.password is not None:
                client.login(self.smtp.user, resolve(self.smtp.password, what="the SMTP password"))
            client.send_message(message)


@dataclass(frozen=True, kw_only=True)
class WebhookNotifier:
    url: str

    def send(self, alert: Alert, state: Literal["raised", "cleared"]) -> None:
        body = json.dumps({
            "state": state, "kind": alert.kind, "subject": alert.subject, "severity": alert.severity,
            "message": alert.message, "estate": alert.estate, "time": alert.time,
        }).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as answer:
            answer.read()


@dataclass(frozen=True, kw_only=True)
class Dispatcher:
    """Sends an alert to every notifier the spec's `notifications` names, filtered by event kind."""

    notifiers: tuple[Notifier, ...]
    kinds: frozenset[str]

    @classmethod
    def from_spec(cls, notifications: Notifications) -> Dispatcher:
        notifiers: list[Notifier] = []
        if notifications.email and notifications.smtp is not None:
            notifiers.append(EmailNotifier(smtp=notifications.smtp, recipients=tuple(notifications.email)))
        if notifications.webhook:
            notifiers.append(WebhookNotifier(url=notifications.webhook))
        return cls(notifiers=tuple(notifiers), kinds=frozenset(notifications.events))

    def dispatch(self, server: ConfigServer, alert: Alert, state: Literal["raised", "cleared"]) -> None:
        if alert.kind not in self.kinds:
            return
        for notifier in self.notifiers:
            try:
                notifier.send(alert, state)
            except (OSError, smtplib.SMTPException, urllib.error.URLError) as err:
                server.event(
                    "warning", "notification_failed", alert.subject,
                    f"{type(notifier).__name__} could not send {alert.kind}: {err}; retrying in {RETRY_BASE_S:.0f} s",
                )
                server.store.execute(
                    "INSERT INTO outbox (notifier, state, alert, attempts, next_try, error) VALUES (?, ?, ?, ?, ?, ?)",
                    (type(notifier).__name__, state, json.dumps(alert.__dict__), 1, server.clock() + RETRY_BASE_S,
                     str(err)[:500]))

    def retry(self, server: ConfigServer) -> int:
        """Send again the notifications whose retry is due; returns how many went out."""
        now = server.clock()
        due = server.store.query("SELECT id, notifier, state, alert, attempts FROM outbox WHERE next_try <= ? "
                                 "ORDER BY id", (now,))
        by_name = {type(n).__name__: n for n in self.notifiers}
        sent = 0
        for row in due:
            with server.store.transaction() as tx:  # claim it: another server on the same store may be here too
                claimed = tx.query("DELETE FROM outbox WHERE id = ? RETURNING id", (row["id"],))
            if not claimed:
                continue
            alert = Alert(**json.loads(row["alert"]))
            notifier = by_name.get(row["notifier"])
            if notifier is None:  # the spec no longer names this channel
                continue
            try:
                notifier.send(alert, row["state"])
            except (OSError, smtplib.SMTPException, urllib.error.URLError) as err:
                attempts = int(row["attempts"]) + 1
                if attempts > RETRY_ATTEMPTS:
                    server.event("critical", "notification_dropped", alert.subject,
                                 f"{row['notifier']} gave up on {alert.kind} after {RETRY_ATTEMPTS} tries: {err}")
                    continue
                delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempts - 1))
                server.event("warning", "notification_failed", alert.subject,
                             f"{row['notifier']} could not send {alert.kind} (try {attempts}): {err}; "
                             f"retrying in {delay:.0f} s")
                server.store.execute(
                    "INSERT INTO outbox (notifier, state, alert, attempts, next_try, error) VALUES (?, ?, ?, ?, ?, ?)",
                    (row["notifier"], row["state"], row["alert"], attempts, now + delay, str(err)[:500]))
                continue
            sent += 1
            server.event("info", "notification_sent", alert.subject,
                         f"{row['notifier']} sent {alert.kind} on try {int(row['attempts']) + 1}")
        return sent


@dataclass(frozen=True, kw_only=True)
class Condition:
    kind: str
    subject: str
    severity: Severity
    message: str


def conditions(server: ConfigServer) -> list[Condition]:
    """The alert conditions that hold now, from the server's health overview."""
    view = server.overview()
    found: list[Condition] = []
    for m in view.machines:
        over = [d for d in m.disks if d.rpo_seconds is not None and d.rpo_seconds > m.rpo_threshold_s]
        if over:
            worst = max(over, key=lambda d: d.rpo_seconds or 0)
            found.append(Condition(
                kind="rpo_missed", subject=m.name,
                severity="critical" if m.health.state == "Critical" else "warning",
                message=f"{m.name}: RPO {worst.rpo_seconds:.0f} s on disk {worst.disk} exceeds the "
                        f"threshold of {m.rpo_threshold_s:.0f} s (replication continues)",
            ))
        if m.power_state == "off":
            found.append(Condition(kind="machine_off", subject=m.name, severity="warning",
                                   message=f"protected machine {m.name} is powered off"))
        if m.last_heartbeat is not None and view.time - m.last_heartbeat > server.heartbeat_timeout_s:
            found.append(Condition(
                kind="heartbeat_lost", subject=m.name, severity="critical",
                message=f"the agent of {m.name} has sent no heartbeat for "
                        f"{view.time - m.last_heartbeat:.0f} s",
            ))
    found.extend(_component_conditions(server, view))
    found.extend(_uncovered_critical(server, view, found))
    return found


def _uncovered_critical(server: ConfigServer, view: Any, found: list[Condition]) -> list[Condition]:
    """`health_critical` for a Critical machine or server no critical condition speaks of; one that has
    never reported counts once the vault is older than the heartbeat timeout (a new estate is quiet)."""
    covered = {c.subject for c in found if c.severity == "critical"}
    created = server.store.get_meta("vault_created")
    settled = created is not None and view.time - float(created) > server.heartbeat_timeout_s
    out: list[Condition] = []
    subjects = [(m.name, m.health, m.last_heartbeat) for m in view.machines]
    subjects += [(c.name, c.health, c.last_heartbeat) for c in view.components]
    for name, state, last in subjects:
        if state.state != "Critical" or name in covered or (last is None and not settled):
            continue
        out.append(Condition(kind="health_critical", subject=name, severity="critical",
                             message=f"{name} is Critical: {'; '.join(state.reasons)}"))
    return out


def _component_conditions(server: ConfigServer, view: Any) -> list[Condition]:
    found: list[Condition] = []
    for c in view.components:
        if c.last_heartbeat is not None and view.time - c.last_heartbeat > server.heartbeat_timeout_s:
            found.append(Condition(
                kind="heartbeat_lost", subject=c.name, severity="critical",
                message=f"{c.role.replace('_', ' ')} {c.name} has sent no heartbeat for "
                        f"{view.time - c.last_heartbeat:.0f} s",
            ))
        if c.role == "process_server" and c.cache_free_fraction is not None:
            for reason in c.health.reasons:
                if "cache" not in reason:
                    continue
                kind = "cache_critical" if "critical" in reason else "cache_warning"
                found.append(Condition(kind=kind, subject=c.name,
                                       severity="critical" if kind == "cache_critical" else "warning",
                                       message=reason))
    return found


def open_alert(server: ConfigServer, dispatcher: Dispatcher, condition: Condition) -> bool:
    """Open the alert unless it is open already; notify only when this call opened it."""
    now = server.clock()
    with server.store.transaction() as tx:
        inserted = tx.query(
            "INSERT INTO open_alerts (condition, subject, opened, severity, message) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (condition, subject) DO NOTHING RETURNING condition",
            (condition.kind, condition.subject, now, condition.severity, condition.message),
        )
    if not inserted:
        return False
    server.event(condition.severity, condition.kind, condition.subject, condition.message)
    dispatcher.dispatch(server, Alert(kind=condition.kind, subject=condition.subject, severity=condition.severity,
                                      message=condition.message, estate=server.estate.estate, time=now), "raised")
    return True


def clear_alert(server: ConfigServer, dispatcher: Dispatcher, kind: str, subject: str) -> bool:
    with server.store.transaction() as tx:
        rows = tx.query("SELECT severity, message FROM open_alerts WHERE condition = ? AND subject = ?",
                        (kind, subject))
        tx.execute("DELETE FROM open_alerts WHERE condition = ? AND subject = ?", (kind, subject))
    if not rows:
        return False
    message = f"cleared: {rows[0]['message']}"
    server.event("info", f"{kind}_cleared", subject, message)
    dispatcher.dispatch(server, Alert(kind=kind, subject=subject, severity=rows[0]["severity"], message=message,
                                      estate=server.estate.estate, time=server.clock()), "cleared")
    return True


@dataclass(frozen=True, kw_only=True)
class Transitions:
    raised: tuple[tuple[str, str], ...]
    cleared: tuple[tuple[str, str], ...]


def evaluate(server: ConfigServer, dispatcher: Dispatcher) -> Transitions:
    """One pass: open alerts for new conditions, clear those that no longer hold."""
    now_holding = {(c.kind, c.subject): c for c in conditions(server)}
    placeholders = ", ".join("?" for _ in HEALTH_KINDS)
    open_rows = server.store.query(
        f"SELECT condition, subject FROM open_alerts WHERE condition IN ({placeholders})", HEALTH_KINDS
    )
    already = {(r["condition"], r["subject"]) for r in open_rows}
    raised = [key for key, c in now_holding.items() if key not in already and open_alert(server, dispatcher, c)]
    cleared = [key for key in sorted(already - set(now_holding)) if clear_alert(server, dispatcher, *key)]
    return Transitions(raised=tuple(raised), cleared=tuple(cleared))


class AlertLoop:
    """Evaluates alerts every `interval_s` seconds in a daemon thread until `stop()`."""

    def __init__(self, *, server: ConfigServer, dispatcher: Dispatcher, interval_s: float) -> None:
        self._server = server
        self._dispatcher = dispatcher
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dr-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + SEND_TIMEOUT_S * 2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                evaluate(self._server, self._dispatcher)
                self._dispatcher.retry(self._server)
            except Exception as err:
                self._server.event("warning", "alert_loop_error", "config-server", f"{type(err).__name__}: {err}")

