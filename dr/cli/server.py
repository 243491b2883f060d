"""`dr config-server`: run the configuration server, mint dashboard login links and operator tokens.
Parsing arguments and rendering only; the server lives in `dr.server`."""

from __future__ import annotations

import ipaddress
import socket
import tempfile
from pathlib import Path

import click

from dr.errors import MissingExtra, UsageError
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


def _server_names(host: str) -> tuple[str, ...]:
    """Names the server's certificate holds: the listen address, and when it listens on every
    address (0.0.0.0, ::) this machine's names and addresses, so components dialling any of them
    verify it against the vault CA."""
    if host not in ("0.0.0.0", "::", ""):
        return (host,)
    names = {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:
        pass
    return tuple(sorted(names))


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
    from dr_agent.pki import write_private

    from dr.server import alerts, certs
    from dr.server.service import ConfigServer
    from dr.server.settings import open_state, passphrase, require_private, require_private_state, state_url
    from dr.validate import load_valid

    host, port = _listen(listen)
    if plain_http and not _loopback(host):
        raise UsageError(f"--plain-http serves tokens in clear text: allowed on loopback only, not on {host}")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("give both --tls-cert and --tls-key, or neither (the vault CA then issues one)")
    estate, _ = load_valid(spec)
    # Secrets at rest: refuse a state store or TLS key others can read (the message says how to fix it).
    require_private_state(state_url(state))
    if tls_key is not None:
        require_private(tls_key, "the TLS key")
    if passphrase_file is not None and passphrase_file.exists() and passphrase_file.stat().st_mode & 0o077:
        click.echo(f"dr: warning: the vault passphrase file {passphrase_file} is open to other users: "
                   f"chmod 600 {passphrase_file}", err=True)
    server = ConfigServer(store=open_state(state), estate=estate,
                          heartbeat_timeout_s=_duration_seconds(heartbeat_timeout))
    vault_passphrase = passphrase(passphrase_file)
    server.init_vault(vault_passphrase)
    loop = alerts.AlertLoop(server=server, dispatcher=alerts.Dispatcher.from_spec(estate.notifications),
                            interval_s=_duration_seconds(check_every))
    with tempfile.TemporaryDirectory(prefix="dr-cs-") as tmp:
        ssl: dict[str, str] = {}
        if not plain_http:
            if tls_cert is None or tls_key is None:
                issued = certs.issue(server.store, passphrase=vault_passphrase, name=socket.getfqdn(),
                                     role="config_server",
                                     hosts=_server_names(host))
                tls_cert, tls_key = Path(tmp) / "server.pem", Path(tmp) / "server.key"
                # Both 0600 in a 0700 folder (TemporaryDirectory): nothing the server writes is readable by others.
                write_private(tls_cert, (issued.certificate_pem + issued.ca_pem).encode())
                write_private(tls_key, (issued.private_key_pem or "").encode())
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


@config_server.command("revoke")
@click.argument("name")
@click.option("--state", help=STATE_HELP)
@click.option("--passphrase-file", type=click.Path(path_type=Path), help=PASSPHRASE_HELP)
def revoke_cmd(name: str, state: str | None, passphrase_file: Path | None) -> None:
    """Revoke every token of a component or operator at once, and forget the component (the name may
    register again, in any role, with the vault passphrase).

    \b
    Example:
        dr config-server revoke web01-agent
    """
    import time

    from dr.server.service import require_passphrase, revoke_tokens
    from dr.server.settings import open_state, passphrase

    store = open_state(state)
    require_passphrase(store, passphrase(passphrase_file))
    count = revoke_tokens(store, name, now=time.time())
    click.echo(f"{name}: {count} token(s) revoked; it must register again")


@config_server.command("logout")
@click.option("--state", help=STATE_HELP)
@click.option("--passphrase-file", type=click.Path(path_type=Path), help=PASSPHRASE_HELP)
def logout_cmd(state: str | None, passphrase_file: Path | None) -> None:
    """Sign every browser out of the dashboard (their sessions end at once; components keep their tokens).

    \b
    Example:
        dr config-server logout
    """
    from dr.server.service import end_sessions, require_passphrase
    from dr.server.settings import open_state, passphrase

    store = open_state(state)
    require_passphrase(store, passphrase(passphrase_file))
    click.echo(f"{end_sessions(store)} browser session(s) ended")


COMMANDS: list[click.Command] = [config_server]
