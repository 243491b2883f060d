"""`dr failover`: run a recovery plan (test, planned, unplanned), resume it, commit, change point,
clean up a test failover, fail back, confirm a manual step, show a job. Parsing and rendering only;
the runner lives in `dr.failover`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from dr.errors import UsageError
from dr.output import echo_json, format_option

STATE_HELP = "state store shared with the configuration server (env DR_STATE; default ./dr-state.db)"
SPEC_HELP = "the spec (default ./dr.yaml; env DR_SPEC); a resumed job uses the spec it was started with"
STORAGE_HELP = ("Azure Storage connection string where recovered disks go "
                "(env DR_STORAGE_CONNECTION_STRING; Azurite's works for rehearsals)")


class _DefaultRun(click.Group):
    """`dr failover PLAN ...` and `dr failover --resume JOB` run; known words are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _spec_path(option: Path | None) -> Path:
    return option or Path(os.environ.get("DR_SPEC", "dr.yaml"))


def _runner(spec: Path, state: str | None, storage: str | None, *, quiet: bool,
            shutdown: str = "manual") -> Any:
    from dr.failover.datapath import ReplicaExporter
    from dr.failover.provider import BlobDiskStore, Environment, StoreCatalog
    from dr.failover.runner import Runner
    from dr.server.service import ConfigServer
    from dr.server.settings import STORAGE_ENV, open_state
    from dr.validate import load_valid

    estate, _ = load_valid(spec)
    store = open_state(state)
    connection = storage or os.environ.get(STORAGE_ENV)
    if not connection:
        raise UsageError(f"where do recovered disks go? give --storage CONNECTION_STRING or export {STORAGE_ENV}")
    # Points, and where each point's bytes are, come from the configuration server's catalog (what
    # the master targets report); page blob replicas are read with DR_STORAGE_<ACCOUNT> as on them.
    server = ConfigServer(store=store, estate=estate)
    source = None
    if shutdown == "vcenter":
        from dr.failover.source import VsphereSource, sources_from_spec

        source = VsphereSource(sources=sources_from_spec(estate))
    env = Environment(
        catalog=StoreCatalog(store=store),
        source=source,
        exporter=ReplicaExporter(server=server),
        disks=BlobDiskStore(connection_string=connection),
        workdir=Path(os.environ.get("DR_WORKDIR", "/var/tmp")) / "dr-failover",
    )
    prompt = None
    if sys.stdin.isatty():
        def prompt(text: str) -> bool:
            while not click.confirm(f"{text}. Done?", default=False):
                pass
            return True
    return Runner(server=server, env=env, spec_path=spec,
                  echo=(lambda _line: None) if quiet else click.echo, prompt=prompt)


def _render_job(job: Any, fmt: str) -> None:
    if fmt == "json":
        echo_json(job.as_dict())
        return
    click.echo(f"job {job.id}: {job.kind} of plan {job.plan}: {job.state}")
    if job.error:
        click.echo(f"stopped at {job.error}")
    for step in job.steps:
        mark = {"succeeded": "ok", "failed": "FAILED", "waiting": "waiting", "running": "running",
                "skipped": "skipped"}.get(step.state, "")
        click.echo(f"{step.idx:>3}. [{mark:^7}] {step.title}")


common = [
    click.option("--spec", type=click.Path(path_type=Path), help=SPEC_HELP),
    click.option("--state", help=STATE_HELP),
    click.option("--storage", help=STORAGE_HELP),
    format_option("text", "json"),
]


def _common(function: Any) -> Any:
    for option in reversed(common):
        function = option(function)
    return function


@click.group("failover", cls=_DefaultRun)
def failover() -> None:
    """Run a recovery plan: groups in order, machines of a group in parallel, actions between.

    \b
    Examples:
        dr failover sharepoint --type test --point latest-multi-vm --dry-run
        dr failover sharepoint --type test --point latest-multi-vm
        dr failover cleanup JOB                       # remove a test failover's resources
        dr failover sharepoint --type planned         # shut down, drain, zero data loss
        dr failover --resume JOB                      # continue a stopped job
        dr failover commit JOB | change-point JOB --point latest-app | failback JOB
        dr failover confirm JOB STEP                  # a manual step, from another terminal

    Every run is a job in the configuration server's store (`--state`), with its steps and a log;
    exit status 1 when a step fails (the message says which, and why).
    """


@failover.command("run", hidden=True)
@click.argument("plan", required=False)
@click.option("--type", "failover_type", type=click.Choice(["test", "planned", "unplanned"]),
              help="test: isolated network, no impact; planned: shut down and drain; unplanned: now")
@click.option("--point", default="latest", show_default=True,
              help="latest | latest-processed | latest-app | latest-multi-vm | a time (2026-11-24T23:00:00Z)")
@click.option("--dry-run", is_flag=True, help="print the exact steps and change nothing")
@click.option("--resume", "resume", metavar="JOB", help="continue a stopped job at its failed step")
@click.option("--accept-spec-change", is_flag=True,
              help="with --resume: run the remaining steps with the spec as it is now, though it changed "
                   "since the job started")
@click.option("--shutdown", type=click.Choice(["manual", "vcenter"]), default="manual", show_default=True,
              help="how source machines are shut down (planned/unplanned): confirmed by an operator, or "
                   "through the site's vCenter (its password reference must resolve)")
@_common
def run_cmd(plan: str | None, failover_type: str | None, point: str, dry_run: bool, resume: str | None,
            accept_spec_change: bool, shutdown: str, spec: Path | None, state: str | None, storage: str | None,
            fmt: str) -> None:
    from dr.failover.points import Choice
    from dr.failover.steps import failover_steps, find_plan, render

    if resume:
        if plan or failover_type:
            raise UsageError("--resume JOB continues a job as it was started: give no PLAN or --type with it")
        from dr.server.jobs import Jobs
        from dr.server.settings import open_state

        job = Jobs(store=open_state(state)).get(resume)
        runner = _runner(spec or Path(job.spec), state, storage, quiet=fmt == "json", shutdown=shutdown)
        _render_job(runner.run(resume, accept_spec_change=accept_spec_change), fmt)
        return
    if accept_spec_change:
        raise UsageError("--accept-spec-change goes with --resume JOB (a new job starts with the spec as it is)")
    if not plan or not failover_type:
        raise UsageError("give the plan and its type: dr failover PLAN --type test|planned|unplanned "
                         "(or --resume JOB)")
    choice = Choice.parse(point)
    spec_path = _spec_path(spec)
    if dry_run:
        from dr.failover.steps import PlanNotRunnable
        from dr.rules import missing_action_files
        from dr.validate import load_valid

        estate, _ = load_valid(spec_path)
        plan_spec = find_plan(estate, plan)
        missing = missing_action_files(plan_spec, spec_path.resolve().parent)
        if missing:
            raise PlanNotRunnable(f"plan {plan}: {'; '.join(missing)}")
        steps = failover_steps(estate, plan_spec, failover_type, choice,  # type: ignore[arg-type]
                               automatic_shutdown=shutdown == "vcenter")
        if fmt == "json":
            echo_json([{"idx": i, "kind": s.kind, "title": s.title, "group": s.group, "machine": s.machine}
                       for i, s in enumerate(steps, start=1)])
        else:
            click.echo(f"{failover_type} failover of plan {plan} at point {choice} (dry run: nothing changes):")
            for line in render(steps):
                click.echo(line)
        return
    runner = _runner(spec_path, state, storage, quiet=fmt == "json", shutdown=shutdown)
    job_id = runner.start_failover(plan, failover_type, choice)
    _render_job(runner.run(job_id), fmt)


def _with_reverse_replication(runner: Any, storage: str | None, extra: dict[str, Any]) -> Any:
    import dataclasses

    from dr.failover.datapath import AgentReverseReplication
    from dr.server.settings import STORAGE_ENV

    missing = [f"--{k.replace('_', '-')}" for k in ("reverse_process_server", "identity", "onprem_catalog",
                                                     "restore_dir") if not extra.get(k)]
    if missing:
        raise UsageError(f"failback replicates back on premises: give {', '.join(missing)}")
    host, _, port = str(extra["reverse_process_server"]).rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--reverse-process-server expects HOST:PORT, found {extra['reverse_process_server']!r}")
    replication = AgentReverseReplication(
        connection_string=storage or os.environ.get(STORAGE_ENV, ""), process_server=(host, int(port)),
        identity_dir=extra["identity"], onprem_catalog=extra["onprem_catalog"], restore_dir=extra["restore_dir"])
    return dataclasses.replace(runner, env=dataclasses.replace(runner.env, replication=replication))


def _follow_up(verb: str) -> Any:
    @click.argument("job")
    @_common
    def command(job: str, spec: Path | None, state: str | None, storage: str | None,
                fmt: str, **extra: Any) -> None:
        from dr.server.jobs import Jobs
        from dr.server.settings import open_state

        record = Jobs(store=open_state(state)).get(job)
        if verb == "failback":  # a physical machine is refused before anything else is asked for
            from dr.failover.steps import failback_steps, find_plan
            from dr.validate import load_valid

            estate, _ = load_valid(spec or Path(record.spec))
            failback_steps(estate, find_plan(estate, record.plan))
        runner = _runner(spec or Path(record.spec), state, storage, quiet=fmt == "json")
        if verb == "failback":
            runner = _with_reverse_replication(runner, storage, extra)
        if verb == "commit":
            new = runner.start_commit(job)
        elif verb == "cleanup":
            new = runner.start_cleanup(job)
        elif verb == "failback":
            new = runner.start_failback(job)
        else:
            from dr.failover.points import Choice

            new = runner.start_change_point(job, Choice.parse(extra["point"]))
        _render_job(runner.run(new), fmt)

    return command


failover.command("commit", help="Commit a planned or unplanned failover: drop the other recovery points.\n\n"
                 "\b\nExample:\n    dr failover commit 20261124-230000-ab12cd")(_follow_up("commit"))
failover.command("cleanup", help="Remove a test failover's resources (its resource group's disks).\n\n"
                 "\b\nExample:\n    dr failover cleanup 20261124-230000-ab12cd")(_follow_up("cleanup"))
_failback = _follow_up("failback")
for _option in reversed([
    click.option("--reverse-process-server", metavar="HOST:PORT",
                 help="the process server that carries reverse replication to the on-premises master target"),
    click.option("--identity", type=click.Path(file_okay=False, path_type=Path),
                 help="the recovered machines' agent identities: DIR/MACHINE/ (cert.pem, key.pem, ca.pem from "
                      "`dr-agent register --name failback-MACHINE --machine MACHINE --role agent --out DIR/MACHINE`); "
                      "one identity in DIR serves a plan of one machine"),
    click.option("--onprem-catalog", type=click.Path(path_type=Path),
                 help="the on-premises master target's catalog.sqlite"),
    click.option("--restore-dir", type=click.Path(file_okay=False, path_type=Path),
                 help="where the vSphere VMs' disks are restored (a datastore path)"),
]):
    _failback = _option(_failback)
failover.command("failback", help="Reprotect (reverse replication) and fail back to vSphere, in plan order. "
                 "Physical machines cannot fail back (as in ASR).\n\n"
                 "\b\nExample:\n    dr failover failback JOB --reverse-process-server ps-azure:9443 \\\n"
                 "        --identity /etc/dr/runner --onprem-catalog /var/lib/dr-agent/mt/catalog.sqlite \\\n"
                 "        --restore-dir /vmfs/volumes/ds1/restore")(_failback)
failover.command("change-point", help="Materialize a failed-over plan at another recovery point (before "
                 "commit).\n\n\b\nExample:\n    dr failover change-point JOB --point latest-app")(
    click.option("--point", required=True, help="latest | latest-processed | latest-app | latest-multi-vm | a time")(
        _follow_up("change-point")))


@failover.command("confirm")
@click.argument("job")
@click.argument("step", type=int)
@click.option("--by", default=lambda: os.environ.get("USER", "terminal"), help="who confirms (shown in the log)")
@click.option("--state", help=STATE_HELP)
def confirm_cmd(job: str, step: int, by: str, state: str | None) -> None:
    """Confirm a waiting manual step of a running job (from any terminal that reaches the store).

    \b
    Example:
        dr failover confirm 20261124-230000-ab12cd 7
    """
    from dr.server.jobs import Jobs
    from dr.server.settings import open_state

    Jobs(store=open_state(state)).confirm(job, step, by=by)
    click.echo(f"step {step} of job {job} confirmed by {by}")


@failover.command("show")
@click.argument("job")
@click.option("--state", help=STATE_HELP)
@click.option("--log", "with_log", is_flag=True, help="also print the job's log")
@click.option("--pinned-spec", is_flag=True,
              help="print only the spec the job started with (the estate as JSON, which dr reads as YAML)")
@format_option("text", "json")
def show_cmd(job: str, state: str | None, with_log: bool, pinned_spec: bool, fmt: str) -> None:
    """Show a job's steps, their states, why it stopped, and which runner holds it.

    \b
    Example:
        dr failover show 20261124-230000-ab12cd --log
        dr failover show 20261124-230000-ab12cd --pinned-spec > dr.yaml
    """
    import time
    from datetime import UTC, datetime

    from dr.server.jobs import Jobs
    from dr.server.settings import open_state

    jobs = Jobs(store=open_state(state))
    record = jobs.get(job)
    if pinned_spec:
        pin = jobs.pin(job)
        if pin is None:
            raise UsageError(f"job {job} was started by a dr that did not pin its spec: nothing to print")
        click.echo(pin.estate)
        return
    lease = jobs.lease(job)
    now = time.time()
    if fmt == "json":
        data = record.as_dict()
        data["runner"] = None if lease is None else {
            "holder": lease.holder, "since": lease.since, "expires": lease.expires, "expired": lease.expires < now}
        if with_log:
            data["log"] = jobs.log_lines(job)
        echo_json(data)
        return
    _render_job(record, fmt)
    if lease is not None:
        click.echo(f"runner: {lease.describe(now)}")
    elif record.state in ("running", "waiting"):
        click.echo(f"runner: none holds the job (it stopped without finishing): `dr failover --resume {job}`")
    if with_log:
        for line in jobs.log_lines(job):
            stamp = datetime.fromtimestamp(line["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{stamp}  {line['line']}")


COMMANDS: list[click.Command] = [failover]
