"""The configuration server's HTTP face: a REST API (OpenAPI at /openapi.json, docs at /docs) and a
server-rendered dashboard at /.

Every call needs a token (`Authorization: Bearer <token>`), except registration (which needs the
vault passphrase instead), the OpenAPI schema, and the one-time dashboard login link. A browser gets
its token as an HttpOnly cookie through a login link minted by an operator
(`dr config-server login-link`), so no token is ever typed into a URL bar twice.

Hostile input is refused before it costs anything (`dr.server.security`): bodies past their limit
with 413 before they are read whole, every field bounded by the schemas, a state-changing request
from another origin with 403, a cookie-authenticated one without its CSRF token with 403, the vault
passphrase throttled per client address (429 with Retry-After). A token reads only what its role
may: operators everything, an agent its own machine's recovery points, the services nothing.
"""

# No `from __future__ import annotations` here: FastAPI reads the route annotations at definition time,
# and they name dependencies local to `create_app`.

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import jinja2
from dr_agent.contract import CA_PATH, CATALOG_PATH, HEARTBEAT_PATHS, REGISTER_PATH, Role
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dr import __version__
from dr.errors import DrError
from dr.output import span
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
from dr.server.security import (
    BodyLimit,
    PassphraseThrottle,
    RefusalLog,
    csrf_key,
    csrf_token,
    request_token,
    same_origin,
)
from dr.server.service import (
    LOGIN_LINK_TTL_S,
    AuthError,
    ConfigServer,
    Conflict,
    Forbidden,
    NotFound,
    Principal,
    drop_token,
    mint_login_code,
    use_login_code,
)

COOKIE = "dr_token"
# A refused body's answer lists at most this many of its errors.
VALIDATION_ERRORS_MAX = 20
# A dashboard form has one or two fields; more is not a form of ours.
FORM_FIELDS_MAX = 8
# The dashboard reloads itself this often (seconds).
DASHBOARD_REFRESH_S = 15
TEMPLATES = Path(__file__).parent / "templates"

# Path parameters are bounded like body fields: names as the schemas bound them, step numbers, login codes.
NAME_MAX = 120
JOB_ID_MAX = 64
STEP_MAX = 100_000
CODE_MAX = 64
# Event ids and page sizes of GET /api/v1/events.
EVENT_ID_MAX = 2**62
EVENTS_PAGE_MAX = 1000


class TooManyTries(DrError):
    """The vault passphrase was wrong too often from this address: wait (HTTP 429, Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


_STATUS = {AuthError: 401, Forbidden: 403, NotFound: 404, Conflict: 409, TooManyTries: 429}


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def _form_field(request: Request, name: str) -> str | None:
    """A field of an urlencoded form body (the dashboard's forms; no multipart parser needed)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    values = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=FORM_FIELDS_MAX)
    found = values.get(name)
    return found[0] if found else None


def _when(value: float | None) -> str:
    if value is None:
        return "never"
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
        env.filters["seconds"] = span
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
    throttle = PassphraseThrottle()
    refusals = RefusalLog(write=server.event, clock=server.clock)
    csrf_secret = csrf_key(server.store)
    app.add_middleware(BodyLimit, known_token=server.known_token, cookie=COOKIE)

    @app.exception_handler(DrError)
    async def _dr_error(request: Request, err: DrError) -> Response:
        status = next((code for cls, code in _STATUS.items() if isinstance(err, cls)), 400)
        if status == 401 and not request.url.path.startswith("/api/"):
            return HTMLResponse(templates.render("login.html.j2", message=str(err)), status_code=401)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(err, TooManyTries):
            headers = {"Retry-After": str(max(1, round(err.retry_after_s)))}
        return JSONResponse({"detail": str(err)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        # What was wrong and where, without echoing the input: it may be huge, or a NaN that JSON
        # cannot carry back (FastAPI's own answer would fail on it with a 500).
        errors = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", ""))[:500],
                   "type": str(e.get("type", ""))} for e in err.errors()[:VALIDATION_ERRORS_MAX]]
        return JSONResponse({"detail": errors}, status_code=422)

    async def principal(request: Request) -> Principal:
        token, from_cookie = request_token(request.scope, COOKIE)
        unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
        if unsafe and (why := same_origin(request.scope)):
            refusals.refused("request_refused", _client(request), why)
            raise Forbidden(why)
        who = await run_in_threadpool(server.authenticate, token)  # a store query: off the event loop
        if unsafe and from_cookie and token:
            if request.headers.get("origin") is None and request.headers.get("referer") is None:
                raise Forbidden("a state-changing request with the session cookie must say where it comes from "
                                "(Origin): use the dashboard's own forms")
            given = request.headers.get("x-csrf-token") or await _form_field(request, "csrf")
            if not given or not hmac.compare_digest(given, csrf_token(csrf_secret, token)):
                refusals.refused("request_refused", _client(request), "a form without its CSRF token was refused")
                raise Forbidden("this form has no valid CSRF token: reload the page and submit it again")
        return who

    def operator(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role != "operator":
            raise Forbidden(f"{who.name} is a {who.role}: this call needs an operator token")
        return who

    Who = Annotated[Principal, Depends(principal)]
    Operator = Annotated[Principal, Depends(operator)]
    Name = Annotated[str, PathParam(min_length=1, max_length=NAME_MAX)]
    JobId = Annotated[str, PathParam(min_length=1, max_length=JOB_ID_MAX)]
    Step = Annotated[int, PathParam(ge=1, le=STEP_MAX)]

    def session_csrf(request: Request) -> str:
        token, from_cookie = request_token(request.scope, COOKIE)
        return csrf_token(csrf_secret, token) if token and from_cookie else ""

    @app.get(CA_PATH, tags=["registration"])
    def vault_ca() -> dict[str, Any]:
        """The vault CA (PEM) with the server's proof that it holds the vault passphrase
        (HMAC-SHA256 keyed with scrypt(passphrase, salt)): check it before sending the passphrase."""
        return dict(server.vault_ca().to_json())

    @app.post(REGISTER_PATH, response_model=RegisterResponse, tags=["registration"])
    def register(body: RegisterRequest, request: Request) -> RegisterResponse:
        """Register an agent, process server, master target or operator against the vault passphrase
        (throttled per client address: a few wrong tries, then a doubling wait, answered 429)."""
        client = _client(request)
        if why := same_origin(request.scope):
            refusals.refused("request_refused", client, why)
            raise Forbidden(why)
        wait = throttle.wait(client)
        if wait > 0:
            refusals.refused("registration_refused", client, f"registration refused from {client}: too many wrong "
                                                                "vault passphrases")
            raise TooManyTries(f"too many wrong vault passphrases from {client}: wait {wait:.0f} s", wait)
        try:
            answer = server.register(body)
        except AuthError:
            wait = throttle.failed(client)
            refusals.refused("registration_refused", client,
                             f"registration of {body.name} refused from {client}: wrong vault passphrase")
            if wait > 0:
                raise TooManyTries(f"the vault passphrase is wrong; too many wrong tries from {client}: wait "
                                   f"{wait:.0f} s", wait) from None
            raise
        throttle.succeeded(client)
        return answer

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, who: Who) -> Response:
        """End this session (the cookie's token, or the bearer token itself)."""
        token, from_cookie = request_token(request.scope, COOKIE)
        if token:
            drop_token(server.store, token)
        server.event("info", "logged_out", who.name, f"{who.name} logged out")
        if not from_cookie:
            return Response(status_code=204)
        response = HTMLResponse(templates.render("login.html.j2", message="You are logged out."))
        response.delete_cookie(COOKIE)
        return response

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
    def recovery_points(machine: Name, who: Who,
                        disk: Annotated[str | None, Query(max_length=NAME_MAX)] = None) -> list[dict[str, Any]]:
        """A machine's recovery points: for operators, and for the agent of that machine only."""
        if who.role != "operator" and not (who.role == "agent" and server.component_machine(who.name) == machine):
            raise Forbidden(f"{who.name} is a {who.role}: it reads only its own machine's recovery points")
        return server.recovery_points(machine, disk)

    @app.get("/api/v1/status", tags=["health"])
    def status(who: Operator) -> dict[str, Any]:
        """Health of the estate: machines (RPO, points), components, open alerts, events, jobs."""
        return server.overview().as_dict()

    @app.get("/api/v1/events", tags=["events"])
    def events(who: Operator, after: Annotated[int, Query(ge=0, le=EVENT_ID_MAX)] = 0,
               limit: Annotated[int, Query(ge=1, le=EVENTS_PAGE_MAX)] = 100) -> list[dict[str, Any]]:
        return server.events(limit=limit, after=after)

    @app.get("/api/v1/jobs", tags=["jobs"])
    def list_jobs(who: Operator) -> list[dict[str, Any]]:
        return jobs.recent()

    @app.get("/api/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: JobId, who: Operator) -> dict[str, Any]:
        return jobs.get(job_id).as_dict()

    @app.get("/api/v1/jobs/{job_id}/log", tags=["jobs"])
    def job_log(job_id: JobId, who: Operator) -> list[dict[str, Any]]:
        jobs.get(job_id)
        return jobs.log_lines(job_id)

    @app.post("/jobs/{job_id}/steps/{idx}/confirm", include_in_schema=False)
    def confirm_form(job_id: JobId, idx: Step, who: Operator) -> Response:
        """The job page's confirm button (a form with the session's CSRF token)."""
        jobs.confirm(job_id, idx, by=who.name)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.post("/api/v1/jobs/{job_id}/steps/{idx}/confirm", status_code=204, tags=["jobs"])
    def confirm(job_id: JobId, idx: Step, who: Operator, body: Confirmation | None = None) -> None:
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
    def use_login_link(code: Annotated[str, PathParam(max_length=CODE_MAX)], request: Request) -> Response:
        by = use_login_code(server.store, code, now=server.clock())
        token = server.mint_token(name=f"{by}-browser", role="operator", session=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(who: Operator, request: Request) -> HTMLResponse:
        view = server.overview()
        return HTMLResponse(templates.render(
            "dashboard.html.j2", view=view, user=who.name, refresh=DASHBOARD_REFRESH_S,
            version=__version__, generated=_when(time.time()), csrf=session_csrf(request),
        ))

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: JobId, who: Operator, request: Request) -> HTMLResponse:
        job = jobs.get(job_id)
        return HTMLResponse(templates.render(
            "job.html.j2", job=job, log=jobs.log_lines(job_id), refresh=DASHBOARD_REFRESH_S, version=__version__,
            csrf=session_csrf(request),
        ))

    return app
