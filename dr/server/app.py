"""The configuration server's HTTP face: a REST API (OpenAPI at /openapi.json, docs at /docs) and a
server-rendered dashboard at /.

Every call needs a token (`Authorization: Bearer <token>`), except registration (which needs the
vault passphrase instead), the OpenAPI schema, and the one-time dashboard login link. A browser gets
its token as an HttpOnly cookie through a login link minted by an operator
(`dr config-server login-link`), so no token is ever typed into a URL bar twice.
"""

# No `from __future__ import annotations` here: FastAPI reads the route annotations at definition time,
# and they name dependencies local to `create_app`.

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import jinja2
from dr_agent.contract import CA_PATH, CATALOG_PATH, HEARTBEAT_PATHS, REGISTER_PATH, Role
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from dr import __version__
from dr.errors import DrError
from dr.server.jobs import Jobs
from dr.server.schemas import (
    AgentHeartbeat,
    CatalogReport,
    Confirmation,
    MasterTargetHeartbeat,
    ProcessServerHeartbeat,
    RegisterRequest,
    RegisterResponse,
)
from dr.server.service import (
    LOGIN_LINK_TTL_S,
    AuthError,
    ConfigServer,
    Conflict,
    Forbidden,
    NotFound,
    Principal,
    mint_login_code,
    use_login_code,
)

COOKIE = "dr_token"
# The dashboard reloads itself this often (seconds).
DASHBOARD_REFRESH_S = 15
TEMPLATES = Path(__file__).parent / "templates"

_STATUS = {AuthError: 401, Forbidden: 403, NotFound: 404, Conflict: 409}


def _when(value: float | None) -> str:
    if value is None:
        return "never"
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


@dataclass(frozen=True, kw_only=True)
class _Templates:
    env: jinja2.Environment

    @classmethod
    def load(cls) -> "_Templates":
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["when"] = _when
        env.filters["seconds"] = _seconds
        return cls(env=env)

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)


def create_app(server: ConfigServer) -> FastAPI:
    """The ASGI app for one configuration server (run it with uvicorn, or `dr config-server`)."""
    app = FastAPI(
        title="dr configuration server",
        version=__version__,
        description="Registration, heartbeats, health, RPO, recovery points, events and jobs of a dr estate.",
    )
    jobs = Jobs(store=server.store, clock=server.clock)
    templates = _Templates.load()

    @app.exception_handler(DrError)
    async def _dr_error(request: Request, err: DrError) -> Response:
        status = next((code for cls, code in _STATUS.items() if isinstance(err, cls)), 400)
        if status == 401 and not request.url.path.startswith("/api/"):
            return HTMLResponse(templates.render("login.html.j2", message=str(err)), status_code=401)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(err)}, status_code=status, headers=headers)

    def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        return server.authenticate(token)

    def operator(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role != "operator":
            raise Forbidden(f"{who.name} is a {who.role}: this call needs an operator token")
        return who

    Who = Annotated[Principal, Depends(principal)]
    Operator = Annotated[Principal, Depends(operator)]

    @app.get(CA_PATH, tags=["registration"])
    def vault_ca() -> dict[str, Any]:
        """The vault CA (PEM) with the server's proof that it holds the vault passphrase
        (HMAC-SHA256 keyed with scrypt(passphrase, salt)): check it before sending the passphrase."""
        return dict(server.vault_ca().to_json())

    @app.post(REGISTER_PATH, response_model=RegisterResponse, tags=["registration"])
    def register(body: RegisterRequest) -> RegisterResponse:
        """Register an agent, process server, master target or operator against the vault passphrase."""
        return server.register(body)

    @app.post(HEARTBEAT_PATHS[Role.AGENT], status_code=204, tags=["heartbeats"])
    def agent_heartbeat(body: AgentHeartbeat, who: Who) -> None:
        server.heartbeat(who, body)

    @app.post(HEARTBEAT_PATHS[Role.PROCESS_SERVER], status_code=204, tags=["heartbeats"])
    def ps_heartbeat(body: ProcessServerHeartbeat, who: Who) -> None:
        server.heartbeat(who, body)

    @app.post(HEARTBEAT_PATHS[Role.MASTER_TARGET], status_code=204, tags=["heartbeats"])
    def mt_heartbeat(body: MasterTargetHeartbeat, who: Who) -> None:
        server.heartbeat(who, body)

    @app.post(CATALOG_PATH, status_code=204, tags=["recovery points"])
    def catalog(body: CatalogReport, who: Who) -> None:
        """A master target reports its replicas (where each is), their recovery points and RPO."""
        server.report_catalog(who, body)

    @app.get("/api/v1/machines/{machine}/recovery-points", tags=["recovery points"])
    def recovery_points(machine: str, who: Who, disk: str | None = None) -> list[dict[str, Any]]:
        return server.recovery_points(machine, disk)

    @app.get("/api/v1/status", tags=["health"])
    def status(who: Who) -> dict[str, Any]:
        """Health of the estate: machines (RPO, points), components, open alerts, events, jobs."""
        return server.overview().as_dict()

    @app.get("/api/v1/events", tags=["events"])
    def events(who: Who, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return server.events(limit=min(limit, 1000), after=after)

    @app.get("/api/v1/jobs", tags=["jobs"])
    def list_jobs(who: Who) -> list[dict[str, Any]]:
        return jobs.recent()

    @app.get("/api/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, who: Who) -> dict[str, Any]:
        return jobs.get(job_id).as_dict()

    @app.get("/api/v1/jobs/{job_id}/log", tags=["jobs"])
    def job_log(job_id: str, who: Who) -> list[dict[str, Any]]:
        jobs.get(job_id)
        return jobs.log_lines(job_id)

    @app.post("/api/v1/jobs/{job_id}/steps/{idx}/confirm", status_code=204, tags=["jobs"])
    def confirm(job_id: str, idx: int, who: Operator, body: Confirmation | None = None) -> None:
        """Confirm a manual step of a running recovery plan (operators only)."""
        by = body.by if body is not None and body.by != "api" else who.name
        jobs.confirm(job_id, idx, by=by)

    @app.post("/api/v1/login-links", tags=["dashboard"])
    def login_link(request: Request, who: Operator) -> dict[str, Any]:
        """A one-time link that logs a browser into the dashboard (valid for 10 minutes)."""
        code = mint_login_code(server.store, by=who.name, now=server.clock())
        return {"path": f"/login/{code}", "url": str(request.base_url).rstrip("/") + f"/login/{code}",
                "expires_in_seconds": LOGIN_LINK_TTL_S}

    @app.get("/login/{code}", include_in_schema=False)
    def use_login_link(code: str, request: Request) -> Response:
        by = use_login_code(server.store, code, now=server.clock())
        token = server.mint_token(name=f"{by}-browser", role="operator")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(who: Who) -> HTMLResponse:
        view = server.overview()
        return HTMLResponse(templates.render(
            "dashboard.html.j2", view=view, user=who.name, refresh=DASHBOARD_REFRESH_S,
            version=__version__, generated=_when(time.time()),
        ))

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: str, who: Who) -> HTMLResponse:
        job = jobs.get(job_id)
        return HTMLResponse(templates.render(
            "job.html.j2", job=job, log=jobs.log_lines(job_id), refresh=DASHBOARD_REFRESH_S, version=__version__,
        ))

    return app
