"""`dr config-server`: run the configuration server, mint dashboard login links and operator tokens.
Parsing arguments and rendering only; the server lives in `dr.server`."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path

import click

from dr.errors import DrError, MissingExtra, UsageError
from dr.output import echo_json, format_option

STATE_HELP = "state store: a SQLite file or a postgresql:// URL (env DR_STATE; default ./dr-state.db)"
PASSPHRASE_HELP = "file whose first line is the vault passphrase (else env DR_VAULT_PASSPHRASE)"


def _duration_seconds(text: str) -> float:
    from dr.duration import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as err:
        raise UsageError(str(err)) from None


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen expects HOST:PORT such as 127.0.0.1:8443, found {text!r}")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group("config-server")
def config_server() -> None:
    """The configuration server: registration, heartbeats, health, RPO, alerts, jobs, dashboard.

    \b
    Example:
        export DR_VAULT_PASSPHRASE='...'            # the vault passphrase agents register with
        dr config-server start dr.yaml --listen 0.0.0.0:8443 --state /var/lib/dr/state.db
        dr config-server login-link --state /var/lib/dr/state.db --url https://cs01:8443
    """


@config_server.command("start")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT to serve on")
@click.option("--state", help=STATE_HELP)
@click.option("--passphrase-file", type=click.Path(path_type=Path), help=PASSPHRASE_HELP)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="server certificate (PEM); default: one issued by the vault CA")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="its key (PEM)")
@click.option("--plain-http", is_flag=True, help="serve without TLS (allowed on a loopback address only)")
@click.option("--heartbeat-timeout", default="15m", show_default=True,
              help="a component silent this long is Critical and raises heartbeat_lost (ASR: 15 min)")
@click.option("--check-every", default="30s", show_default=True, help="how often alerts are evaluated")
def start_cmd(spec: Path, listen: str, state: str | None, passphrase_file: Path | None, tls_cert: Path | None,
              tls_key: Path | None, plain_http: bool, heartbeat_timeout: str, check_every: str) -> None:
    """Serve the API (OpenAPI at /docs) and the dashboard, and evaluate alerts, until interrupted.

    \b
    Example:
        DR_VAULT_PASSPHRASE=... dr config-server start examples/sharepoint/dr.yaml --plain-http
    """
    try:
        import uvicorn

        from dr.server.app import create_app
    except ImportError:
        raise MissingExtra("dr config-server needs the 'server' extra: pip install 'dr-as-code[server]'") from None
    from dr.server import alerts, certs
    from dr.server.service import ConfigServer
    from dr.server.settings import open_state, passphrase
    from dr.validate import load_valid

    host, port = _listen(listen)
    if plain_http and not _loopback(host):
        raise UsageError(f"--plain-http serves tokens in clear text: allowed on loopback only, not on {host}")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("give both --tls-cert and --tls-key, or neither (the vault CA then issues one)")
    estate, _ = load_valid(spec)
    server = ConfigServer(store=open_state(state), estate=estate,
                          heartbeat_timeout_s=_duration_seconds(heartbeat_timeout))
    server.init_vault(passphrase(passphrase_file))
    loop = alerts.AlertLoop(server=server, dispatcher=alerts.Dispatcher.from_spec(estate.notifications),
                            interval_s=_duration_seconds(check_every))
    with tempfile.TemporaryDirectory(prefix="dr-cs-") as tmp:
        ssl: dict[str, str] = {}
        if not plain_http:
            if tls_cert is None or tls_key is None:
                issued = certs.issue(server.store, name=host, role="config_server", hosts=(host,))
                tls_cert, tls_key = Path(tmp) / "server.pem", Path(tmp) / "server.key"
                tls_cert.write_text(issued.certificate_pem + issued.ca_pem)
                tls_key.touch(mode=0o600)
                tls_key.write_text(issued.private_key_pem or "")
            ssl = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
        scheme = "http" if plain_http else "https"
        click.echo(f"dr config-server: estate {estate.estate}, state {server.store.display_url}, "
                   f"serving {scheme}://{host}:{port} (API docs at /docs)")
        server.event("info", "config_server_started", host, f"listening on {scheme}://{host}:{port}")
        loop.start()
        try:
            uvicorn.run(create_app(server), host=host, port=port, log_level="warning", **ssl)  # type: ignore[arg-type]
        finally:
            loop.stop()


@config_server.command("login-link")
@click.option("--state", help=STATE_HELP)
@click.option("--passphrase-file", type=click.Path(path_type=Path), help=PASSPHRASE_HELP)
@click.option("--url", "base", default="https://127.0.0.1:8443", show_default=True,
              help="the server's address as a browser reaches it")
def login_link_cmd(state: str | None, passphrase_file: Path | None, base: str) -> None:
    """Print a one-time link that signs a browser into the dashboard (valid 10 minutes).

    \b
    Example:
        dr config-server login-link --url https://cs01.contoso.local:8443
    """
    import time

    from dr.server.service import mint_login_code, require_passphrase
    from dr.server.settings import open_state, passphrase

    store = open_state(state)
    require_passphrase(store, passphrase(passphrase_file))
    code = mint_login_code(store, by="cli", now=time.time())
    click.echo(f"{base.rstrip('/')}/login/{code}")


@config_server.command("token")
@click.option("--name", default="operator", show_default=True, help="who the token is for (shown in events)")
@click.option("--state", help=STATE_HELP)
@click.option("--passphrase-file", type=click.Path(path_type=Path), help=PASSPHRASE_HELP)
@format_option("text", "json")
def token_cmd(name: str, state: str | None, passphrase_file: Path | None, fmt: str) -> None:
    """Mint an operator token for the API (confirming manual steps, scripts reading /api/v1/status).

    \b
    Example:
        TOKEN=$(dr config-server token --name oncall)
        curl -H "Authorization: Bearer $TOKEN" https://cs01:8443/api/v1/status
    """
    import time

    from dr.server.service import mint_token, require_passphrase
    from dr.server.settings import open_state, passphrase

    store = open_state(state)
    require_passphrase(store, passphrase(passphrase_file))
    token = mint_token(store, name=name, role="operator", now=time.time())
    if fmt == "json":
        echo_json({"name": name, "role": "operator", "token": token})
    else:
        click.echo(token)


@config_server.command("push-catalog")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--server", "base", required=True, help="the configuration server, e.g. https://cs01:8443")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="this master target's token (from its registration)")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the vault CA (PEM) to verify the server with; default: the system's trust store")
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="DR_CATALOG",
              required=True, help="the master target's catalog.sqlite (env DR_CATALOG)")
def push_catalog_cmd(spec: Path, base: str, token_file: Path, ca: Path | None, catalog: Path) -> None:
    """On a master target: report its per-disk RPO and recovery points to the configuration server
    (run it from a timer, e.g. every minute; each report replaces the previous one).

    \b
    Example:
        dr config-server push-catalog dr.yaml --server https://cs01:8443 --token-file /etc/dr/mt01.token \\
            --ca /etc/dr/ca.pem --catalog /var/lib/dr-agent/mt/catalog.sqlite
    """
    import ssl
    import time

    try:
        import httpx
    except ImportError:
        raise MissingExtra("push-catalog needs the 'server' extra: pip install 'dr-as-code[server]'") from None
    from dr.failover.datapath import catalog_report
    from dr.validate import load_valid

    estate, _ = load_valid(spec)
    report = catalog_report(estate, catalog, now=time.time())
    import re

    token = (token_file.read_text().strip().splitlines() or [""])[0]
    if not re.fullmatch(r"[A-Za-z0-9_-]{20,200}", token):
        raise DrError(f"{token_file} does not hold a token: expected the one line registration returned")
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
    try:
        answer = httpx.post(base.rstrip("/") + "/api/v1/catalog", json=report.model_dump(mode="json"),
                            headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=60)
    except httpx.HTTPError as err:
        raise DrError(f"cannot reach the configuration server at {base}: {err}; check --server and --ca") from None
    if answer.status_code != 204:
        is_json = answer.headers.get("content-type") == "application/json"
        detail = answer.json().get("detail") if is_json else answer.text
        raise DrError(f"the configuration server refused the catalog ({answer.status_code}): {detail}")
    points = sum(len(d.points) for d in report.disks)
    click.echo(f"reported {len(report.disks)} disk(s), {points} recovery point(s) to {base}")


COMMANDS: list[click.Command] = [config_server]
