"""The `digestbot` command: parses arguments, calls pipeline functions, maps errors to exit codes.

Exit codes: 0 success; 1 a runtime failure (feed unusable, a delivery failed or was deferred);
2 a configuration or usage error. Only this module turns DigestbotError into messages.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Engine
from typer.core import TyperArgument, TyperCommand

from digestbot import __version__, apart, app, matching, pipeline, schedule, store
from digestbot import workers as pool
from digestbot.addresses import AddressError, address_key, check_address
from digestbot.configcheck import unmatchable
from digestbot.db import close_all, make_engine
from digestbot.errors import (
    ConfigError,
    DeliverySetupError,
    DigestbotError,
    FetchError,
)
from digestbot.models import DeliveryHealth, DigestState, UnsubscribeMethod
from digestbot.settings import Settings, load_settings
from digestbot.sources.base import FetchedPaper, SourceSpec
from digestbot.subscribers import count_exclusions, count_queries

cli = typer.Typer(
    name="digestbot",
    help="digestbot: a self-hosted daily paper-alert newsletter.\n\n"
    "Fetches the trending papers feed, matches each subscriber's filters and emails personal digests.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")


def main() -> None:
    """Console-script entry point."""
    # What is alive now (the imported modules, most of a process's objects) stays alive until
    # the exit: left out of the cyclic collections, which otherwise walk it again and again
    # while a run allocates (a quarter less time collecting in a large send).
    gc.freeze()
    try:
        cli()
    finally:
        close_all()
        # While it exits, Python collects the whole heap's reference cycles once more: after a
        # large send, 0.5 s of the run for memory the system takes back with the process
        # anyway. Frozen objects are left out of that collection. What must happen at exit is
        # done by then or still happens: the database connections are closed just above, the
        # commands close their files and SMTP connections, and atexit handlers (logging's
        # flush) and the flush of stdout and stderr run as before.
        gc.freeze()


class _Argument(TyperArgument):
    """An argument shown by its metavar alone (`EMAIL`, `[EMAIL]`), never as `{email}` or `<str>`."""

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.display_name_raw if self.required else f"[{self.display_name_raw}]"]

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class _Command(TyperCommand):
    """A command whose arguments are shown the usual Unix way in usage lines and --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = _Argument  # typer builds the parameters; only display changes


# -- helpers ------------------------------------------------------------------------------


def _fail(exc: DigestbotError) -> typer.Exit:
    kind = "configuration error" if isinstance(exc, ConfigError) else "error"
    _traceback_when_debugging(exc)
    err.print(f"digestbot: {kind}: {exc}", markup=False)
    return typer.Exit(exc.exit_code)


def _traceback_when_debugging(exc: BaseException) -> None:
    """With DIGESTBOT_LOG_LEVEL=DEBUG the traceback comes before the one-line message."""
    if logging.getLogger("digestbot").isEnabledFor(logging.DEBUG):
        err.print("".join(traceback.format_exception(exc)), markup=False)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn digestbot's errors into one line on stderr and the matching exit code.

    An operating-system failure that no stage wrapped (a full disk, a file that vanished) is one
    line too, exit 1: the operator sees what and where, never a traceback.
    """
    try:
        yield
    except DigestbotError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        _traceback_when_debugging(exc)
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"digestbot: error: {exc.strerror or exc}{where}", markup=False)
        raise typer.Exit(1) from None


def _settings() -> Settings:
    settings = load_settings()
    app.configure_logging(settings)
    return settings


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--date must be YYYY-MM-DD, got {value!r}", field="--date") from None


def _date_option(help_text: str) -> Any:
    """The one --date option, shared by every command that takes it."""
    return typer.Option("--date", metavar="YYYY-MM-DD", help=help_text)


def _fetch(
    settings: Settings,
    engine: Engine,
    *,
    today: date,
    sources: Sequence[pipeline.NamedSource],
) -> pipeline.FetchReport:
    """Fetch and store every source, a line on stderr for each that worked; a failed one is in the
    report (its error names it), not raised."""
    report = pipeline.fetch_sources(
        engine, sources, today=today, lookback=settings.lookback_days, clock=_now
    )
    for done in report.done:
        what = (
            "not modified since the last fetch"
            if done.not_modified
            else f"fetched {_papers(done.fetched)}"
        )
        err.print(
            f"source {done.name}: {what} from {done.location}: "
            f"{done.new} new, {done.updated} updated",
            markup=False,
        )
    return report  # the failed sources are named by report.error(), which the caller prints


def _papers(n: int) -> str:
    """ "1 paper", "3 papers"."""
    return f"{n} paper{'' if n == 1 else 's'}"


def _fetch_unstored(
    settings: Settings, sources: Sequence[pipeline.NamedSource], *, today: date
) -> list[tuple[str, Sequence[FetchedPaper]]]:
    """What each source gives now, stored nowhere (dry runs); a failing source is a FetchError."""
    fetched: list[tuple[str, Sequence[FetchedPaper]]] = []
    for named in sources:
        try:
            result = named.source.fetch_days(today=today, lookback=settings.lookback_days)
        except FetchError as exc:
            raise FetchError(f"source {named.name}: {exc}") from exc
        failed = result.error()
        if failed is not None:
            raise FetchError(f"source {named.name}: {failed}")
        fetched.append((named.name, result.papers))
    return fetched


# -- commands -----------------------------------------------------------------------------


@cli.command()
def init() -> None:
    """Write a commented subscribers.toml and .env when they do not exist, and create the database.

    Existing files are never overwritten. Edit subscribers.toml, then run `digestbot send`.

    Example: digestbot init
    """
    from digestbot.resources import env_example, subscribers_example

    with _errors():
        settings = _settings()
        for target, source in (
            (settings.subscribers_path, subscribers_example()),
            (Path(".env"), env_example()),
        ):
            if target.exists():
                out.print(f"kept existing {target}", markup=False)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                out.print(f"wrote {target}", markup=False)
        app.database(settings)
        out.print(f"database ready at {settings.database_url}", markup=False)


@cli.command()
def fetch(
    date_: Annotated[
        str | None, _date_option("Fetch as if today were this day (YYYY-MM-DD).")
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source", metavar="NAME", help="Only this source of [[sources]] (repeatable)."
        ),
    ] = None,
) -> None:
    """Fetch every source (today and the lookback days before it) and store new and changed papers.

    Prints, per source, how many papers were new and how many were updated. A broken response
    is rejected whole: nothing from it is stored. One source failing does not stop the others;
    the command then exits 1, naming it.

    Example: digestbot fetch --source arxiv-ml --date 2026-03-02
    """
    with _errors():
        settings = _settings()
        day = _parse_date(date_)
        specs: Sequence[SourceSpec] = app.load_config(settings).sources
        if source:
            specs = app.choose_sources(specs, source, file=str(settings.subscribers_path))
        engine = app.database(settings)
        report = _fetch(
            settings, engine, today=day or _now().date(), sources=app.make_sources(settings, specs)
        )
        new = sum(d.new for d in report.done)
        updated = sum(d.updated for d in report.done)
        out.print(f"{new} new, {updated} updated", markup=False)
        if report.failed:
            err.print(f"digestbot: error: {report.error()}", markup=False)
            raise typer.Exit(1)


@cli.command()
def send(
    subscriber: Annotated[
        list[str] | None,
        typer.Option(
            "--subscriber", "-s", metavar="EMAIL", help="Only this subscriber (repeatable)."
        ),
    ] = None,
    no_fetch: Annotated[
        bool, typer.Option("--no-fetch", help="Use the stored papers; do not fetch first.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Render and summarize; send and record nothing.")
    ] = False,
    date_: Annotated[
        str | None, _date_option("Act as if today were this day (YYYY-MM-DD).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            min=0,
            max=1024,
            help="Worker processes delivering (default DIGESTBOT_WORKERS; 0: one per CPU core).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Fetch, then build and deliver every subscriber's digest now, whatever their schedule.

    One digest per subscriber per day: running it again the same day sends nothing new, and
    due retries of earlier digests go out too. Exits 1 when a digest failed or was deferred.
    Several worker processes deliver at once, each with its own SMTP connection.

    Example: digestbot send --subscriber ada@example.org --dry-run
    """
    with _errors():
        settings = _settings()
        if dry_run or not _plan_apart(settings):
            planned = _plan_send(
                settings, subscriber, no_fetch=no_fetch, dry_run=dry_run, date_=date_
            )
            if planned is None:  # the dry run, printed
                return
            plan, delivery, engine = planned
            # Delivery needs nothing of the subscribers file or of the planning: what this
            # process can give back of their memory goes back before the workers start.
            app.release_memory()
        else:
            plan = apart.call_apart(
                lambda: _plan_send_apart(settings, subscriber, no_fetch=no_fetch, date_=date_),
                what="planning",
            )
            delivery = app.delivery(settings)
            engine = make_engine(settings.database_url)  # migrated by the planning process
        fetch_error = plan.fetch_error
        bar = _Bar()
        try:
            done = pipeline.finish_send(
                engine,
                plan.prepared,
                backend=delivery.backend,
                mail=delivery.mail,
                policy=delivery.policy,
                limiter=delivery.limiter,
                clock=_now,
                on_start=bar.start,
                on_result=bar.advance,
                deliver=_pool(settings, engine, delivery, workers),
            )
        except DeliverySetupError as exc:
            raise DigestbotError(f"delivery stopped, nothing more was attempted: {exc}") from exc
        finally:
            bar.stop()
            delivery.backend.close()
        report = done.report
        out.print(_send_summary(done), markup=False)
        for email, reason in report.deferred:
            err.print(f"deferred {email}: {reason} (will retry)", markup=False)
        for email, reason in report.failed:
            err.print(f"failed {email}: {reason}", markup=False)
        for email, reason in report.taken_over:
            err.print(f"taken over by another run {email}: {reason}", markup=False)
        if done.held is not None:  # some subscribers follow the failed source: not planned
            err.print(f"digestbot: error: {done.held}", markup=False)
        elif fetch_error is not None:  # days outside the windows planned: still a failed run
            err.print(f"digestbot: error: {fetch_error}", markup=False)
        if not report.ok or fetch_error is not None:
            raise typer.Exit(1)


PLAN_APART_BYTES = 1_000_000
"""A subscribers file this large (about 8,000 subscribers) is read and planned in a forked
process (apart.call_apart), whose memory leaves with it: at 100,000 subscribers, about 90 MB
this process would otherwise keep while it delivers. Smaller files are planned here."""


def _plan_apart(settings: Settings) -> bool:
    """Whether `send` plans in a forked process: a large subscribers file, and a process that
    may fork (apart.can_fork)."""
    try:
        size = settings.subscribers_path.stat().st_size
    except OSError:
        return False  # reading it here names the problem
    return size >= PLAN_APART_BYTES and apart.can_fork()


@dataclass(frozen=True, slots=True)
class _Planned:
    """What `send` did before delivery, and all delivery needs (small, so it crosses processes)."""

    prepared: pipeline.Prepared
    fetch_error: FetchError | None  # a source failed: the run exits 1 after delivering


def _plan_send(
    settings: Settings,
    subscriber: list[str] | None,
    *,
    no_fetch: bool,
    dry_run: bool,
    date_: str | None,
) -> tuple[_Planned, app.Delivery, Engine] | None:
    """`send` up to delivery: read the file, check the mail settings, fetch, sync and plan.
    A dry run is printed here (None)."""
    config = app.load_config(settings)
    everyone = config.subscribers
    only = (
        pipeline.select_subscribers(
            everyone, subscriber, source=str(settings.subscribers_path), option="--subscriber"
        )
        if subscriber
        else None
    )
    day = _parse_date(date_)
    delivery = app.delivery(settings)
    try:
        engine = app.database(settings)
        now = _now()
        today = day or now.date()
        sources = app.make_sources(settings, config.sources)
        if dry_run:
            fetched = None if no_fetch else _fetch_unstored(settings, sources, today=today)
            result = pipeline.dry_run(
                engine,
                only if only is not None else everyone,
                mail=delivery.mail,
                fetched=fetched,
                as_of=schedule.as_of(day, now),
                day=day,
                lookback=settings.lookback_days,
                now=now,
            )
            _print_dry_run(settings, result)
            delivery.backend.close()
            return None
        fetch_error: FetchError | None = None
        failed_days: dict[str, tuple[date, ...]] = {}
        if not no_fetch:
            fetched_report = _fetch(settings, engine, today=today, sources=sources)
            fetch_error, failed_days = fetched_report.error(), fetched_report.failed_days()
        prepared = pipeline.prepare_send(
            engine,
            everyone,
            only=only,
            from_addr=delivery.mail.from_addr,
            as_of=schedule.as_of(day, _now()),
            day=day,
            lookback=settings.lookback_days,
            clock=_now,
            fetch_error=fetch_error,
            failed_days=failed_days,
        )
        return _Planned(prepared, fetch_error), delivery, engine
    except BaseException:
        delivery.backend.close()
        raise


def _plan_send_apart(
    settings: Settings, subscriber: list[str] | None, *, no_fetch: bool, date_: str | None
) -> _Planned:
    """`_plan_send` in the planning process: what it returns, without its connections."""
    planned = _plan_send(settings, subscriber, no_fetch=no_fetch, dry_run=False, date_=date_)
    assert planned is not None  # not a dry run
    plan, delivery, engine = planned
    delivery.backend.close()
    engine.dispose()
    return plan


def _pool(
    settings: Settings, engine: Engine, delivery: app.Delivery, workers: int | None
) -> pool.Pool:
    """The delivery of `send`: `--workers`, else DIGESTBOT_WORKERS (0: one per CPU core)."""
    count = workers if workers is not None else settings.workers
    return pool.Pool(settings, engine=engine, delivery=delivery, workers=count, clock=_now)


def _send_summary(done: pipeline.SendSummary) -> str:
    """One line saying what the run did: what it planned, then what came of every attempt."""
    plan, report, waiting = done.plan, done.report, done.waiting
    line = (
        f"planned {plan.planned} new, {plan.skipped} skipped with nothing new, "
        f"{plan.existing} already had their digest for their period, {plan.off} off"
    )
    if plan.suppressed:
        line += f", {plan.suppressed} unsubscribed (not sent)"
    line += f"; sent {report.sent}, deferred {len(report.deferred)}, failed {len(report.failed)}"
    if report.taken_over:
        line += f", taken over by another run {len(report.taken_over)}"
    if report.retries:
        line += f" ({report.retries} of them retries of earlier attempts)"
    if waiting.count:
        line += f"; {waiting.count} waiting for a later retry, next at {_when(waiting.next_at)}"
    return line


def _when(at: datetime | None) -> str:
    """A stored time for people: minutes, UTC."""
    return "-" if at is None else f"{at:%Y-%m-%d %H:%M} UTC"


def _iso(at: datetime | None) -> str | None:
    """A stored time for machines: ISO 8601 in UTC, to the second, with a Z."""
    if at is None:
        return None
    return at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class _Speed(ProgressColumn):
    """Digests per second, averaged over rich's recent window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.0f} digests/s")


class _Bar:
    """A progress bar on a terminal for runs of two digests or more: count, digests/s and ETA."""

    def __init__(self) -> None:
        self.bar: Progress | None = None

    def start(self, total: int) -> None:
        if total < 2 or not sys.stderr.isatty():
            return
        self.bar = Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            _Speed(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.bar.add_task("send", total=total)
        self.bar.start()

    def advance(self, _email: str, _outcome: str) -> None:
        if self.bar is not None:
            self.bar.advance(self.bar.task_ids[0])

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_dry_run(settings: Settings, result: pipeline.DryRun) -> None:
    if result.fetched is not None:
        err.print(
            f"fetched {_papers(result.fetched)} from the sources in {settings.subscribers_path} "
            "(not stored)",
            markup=False,
        )
    table = Table(
        "subscriber", "papers", "more", "subject", title="dry run: nothing sent or recorded"
    )
    for row in result.rows:
        plan = row.plan
        if row.rendered is None:
            table.add_row(plan.email, "0", "0", "(nothing new: skipped)")
        else:
            table.add_row(
                plan.email,
                str(len(plan.items) + len(plan.trending)),
                str(plan.more_count),
                row.rendered.subject,
            )
    out.print(table)
    line = (
        f"{len(result.rows)} digests would be planned; "
        f"{result.existing} already had their digest for their period, {result.off} off"
    )
    if result.suppressed:
        line += f"; {result.suppressed} unsubscribed (not sent)"
    out.print(line, markup=False)


@cli.command(cls=_Command)
def preview(
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="The subscriber's email address.")],
    html: Annotated[
        Path | None,
        typer.Option("--html", metavar="FILE", help="Write the HTML part to this file."),
    ] = None,
    text: Annotated[bool, typer.Option("--text", help="Print the plain-text part.")] = False,
    date_: Annotated[
        str | None, _date_option("Preview as if today were this day (YYYY-MM-DD).")
    ] = None,
) -> None:
    """Render a subscriber's next digest from the stored papers without sending or recording it.

    The next digest is the one waiting in the outbox, if any, else the one a send would build
    now. Prints the subject and the text part (the default), or writes the HTML part to a file.

    Example: digestbot preview ada@example.org --html /tmp/ada.html
    """
    with _errors():
        settings = _settings()
        [spec] = pipeline.select_subscribers(
            app.load_people(settings),
            [email],
            source=str(settings.subscribers_path),
            option="EMAIL",
        )
        day = _parse_date(date_)
        engine = app.database(settings, create=False)
        shown = pipeline.preview(
            engine,
            spec,
            mail=app.mail_context(settings),
            as_of=schedule.as_of(day, _now()),
            day=day,
            lookback=settings.lookback_days,
        )
        _print_preview_period(shown)
        rendered = shown.rendered
        if rendered is None:
            out.print(f"no digest would be sent: {shown.reason}", markup=False)
            return
        if html is not None:
            html.write_text(rendered.html, encoding="utf-8")
            err.print(f"wrote {html}", markup=False)
        if text or html is None:
            out.print(f"Subject: {rendered.subject}\n", markup=False)
            out.print(rendered.text, markup=False)


def _print_preview_period(shown: pipeline.Preview) -> None:
    """On stderr: which period the preview is, and a hint when its papers are not stored yet."""
    if shown.window is not None:
        first = shown.window[0].date().isoformat()
        last = schedule.run_day(shown.window[1]).isoformat()
        what = "waiting in the outbox" if shown.pending else "as a send now would plan it"
        err.print(
            f"{shown.frequency} digest for {shown.period} ({what}), papers featured "
            f"{first} to {last}: {shown.stored_papers} stored",
            markup=False,
        )
    if shown.fetch_day is not None:
        err.print(
            "the papers of this period are not stored yet; run "
            f"`digestbot fetch --date {shown.fetch_day.isoformat()}` first",
            markup=False,
        )


@cli.command()
def run() -> None:
    """Run the background daemon: fetch on an interval and send each digest at its local time.

    Each subscriber gets one digest a day at their send_at in their timezone; after downtime the
    missed days are coalesced into one digest. Several daemons may share a database: one fetches
    and plans, all deliver. SIGTERM or
    SIGINT stops it cleanly after the message in hand; SIGHUP reloads the subscribers file.

    Example: digestbot run
    """
    from digestbot.daemon import Daemon

    with _errors():
        settings = _settings()
        config = app.load_config(settings)
        sources = app.make_sources(settings, config.sources)
        delivery = app.delivery(settings)
        engine = app.database(settings)
        Daemon(
            settings=settings,
            engine=engine,
            specs=config.subscribers,
            delivery=delivery,
            sources=sources,
        ).run_forever()


@cli.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (times in ISO 8601 UTC).")
    ] = False,
) -> None:
    """Show each source's last fetch, papers, subscribers, digests by state, delivery trouble, retries.

    Delivery trouble is the last error that stopped a whole delivery run (server unreachable,
    login refused) until a later run gets a message through. Digests waiting for a retry are
    listed with their next attempt time, failed ones with the server's reply, and people in the
    subscribers file not synced yet by name. Reads only; a missing or broken subscribers file
    is a warning. --json gives the same for monitoring.

    Example: digestbot status --json
    """
    with _errors():
        settings = _settings()
        engine = app.database(settings, create=False)
        emails: list[str] | None = None
        names: list[str] | None = None
        file_error: str | None = None
        try:
            config = app.load_config(settings)
            emails = [sp.email for sp in config.subscribers]
            names = [spec.name for spec in config.sources]
        except ConfigError as exc:
            file_error = str(exc)
        st = pipeline.status(engine, file_emails=emails, sources=names)
        if as_json:
            out.print_json(json.dumps(_status_json(settings, st, emails, file_error)))
        else:
            _print_status(settings, st, emails, file_error)


def _status_json(
    settings: Settings, st: store.Status, emails: list[str] | None, file_error: str | None
) -> dict[str, Any]:
    """`status --json`: stable keys, times in ISO 8601 UTC, null where there is nothing yet."""
    last, health = st.last_fetch, st.delivery
    problem = [
        {
            "email": p.email,
            "period": p.period,
            "attempts": p.attempts,
            "last_error": p.error,
            **(
                {"next_attempt_at": _iso(p.next_attempt_at)}
                if p.state == DigestState.DEFERRED
                else {}
            ),
        }
        for p in st.problems
    ]
    states = [p.state for p in st.problems]
    return {
        "generated_at": _iso(_now()),
        "last_fetch": None
        if last is None
        else {
            "started_at": _iso(last.started_at),
            "finished_at": _iso(last.finished_at),
            "feed_url": last.feed_url,
            "ok": last.ok,
            "new": last.new_count,
            "updated": last.updated_count,
            "error": last.error,
        },
        "last_good_fetch_at": _iso(st.last_good_fetch.started_at) if st.last_good_fetch else None,
        "sources": [
            {
                "name": f.name,
                "last_fetch_at": _iso(f.last.started_at) if f.last else None,
                "location": f.last.feed_url if f.last else None,
                "ok": f.last.ok if f.last else None,
                "new": f.last.new_count if f.last else 0,
                "updated": f.last.updated_count if f.last else 0,
                "error": f.last.error if f.last else None,
                "last_good_fetch_at": _iso(f.last_good.started_at) if f.last_good else None,
            }
            for f in st.sources
        ],
        "papers_stored": st.papers,
        "papers_mailed": st.papers_mailed,
        "subscribers": {
            "file": str(settings.subscribers_path),
            "file_error": file_error,
            "in_file": None if emails is None else len(emails),
            "synced": st.subscribers,
            "not_synced": st.not_synced or [],
        },
        "digests": st.digests_by_state,
        "digests_by_frequency": st.digests_by_frequency,
        "planned_without_a_good_fetch": [
            {"email": n.email, "period": n.period, "state": str(n.state), "note": n.note}
            for n in st.noted
        ],
        "delivery": {
            "failing": bool(health and health.failing),
            "last_error": health.last_error if health else None,
            "last_error_at": _iso(health.last_error_at) if health else None,
            "failing_since": _iso(health.failing_since) if health else None,
            "errors_in_a_row": health.errors_in_a_row if health else 0,
            "last_ok_at": _iso(health.last_ok_at) if health else None,
        },
        "suppressed": {
            "count": st.suppressed,
            "latest": [
                {"address": u.address, "method": str(u.method), "at": _iso(u.at)}
                for u in st.latest_suppressed
            ],
        },
        "waiting_for_retry": [
            p for p, s in zip(problem, states, strict=True) if s == DigestState.DEFERRED
        ],
        "failed": [p for p, s in zip(problem, states, strict=True) if s == DigestState.FAILED],
    }


def _print_status(
    settings: Settings, st: store.Status, emails: list[str] | None, file_error: str | None
) -> None:
    if not st.sources:
        out.print("last fetch: never (run `digestbot fetch`)", markup=False)
    for f in st.sources:
        last = f.last
        if last is None:
            out.print(
                f"source {f.name}: never fetched (run `digestbot fetch --source {f.name}`)",
                markup=False,
            )
            continue
        outcome = (
            f"ok, {last.new_count} new, {last.updated_count} updated"
            if last.ok
            else f"FAILED: {last.error}"
        )
        out.print(
            f"source {f.name}: last fetch {_when(last.started_at)} from {last.feed_url}: {outcome}",
            markup=False,
        )
        if not last.ok:
            good = _when(f.last_good.started_at) if f.last_good else "never"
            out.print(f"  last good fetch of {f.name}: {good}", markup=False)
    out.print(f"papers stored: {st.papers}", markup=False)
    out.print(_subscribers_line(settings, st, emails, file_error), markup=False)
    states = ", ".join(f"{k} {v}" for k, v in sorted(st.digests_by_state.items()) if v)
    out.print(f"digests: {states or 'none yet'}; papers mailed: {st.papers_mailed}", markup=False)
    if st.digests_by_frequency:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(st.digests_by_frequency.items()))
        out.print(f"digests by frequency: {kinds}", markup=False)
    if st.noted:
        out.print("planned without a good fetch for their day (newest first):", markup=False)
    for n in st.noted:
        out.print(f"  {n.state:<8} {n.email}  day {n.period}: {n.note}", markup=False)
    out.print(_delivery_line(st.delivery), markup=False)
    out.print(f"unsubscribed (suppressed): {st.suppressed}", markup=False)
    for u in st.latest_suppressed:
        out.print(f"  {u.address}  {u.method} {_when(u.at)}", markup=False)
    waiting = [p for p in st.problems if p.state == DigestState.DEFERRED]
    failed = [p for p in st.problems if p.state == DigestState.FAILED]
    for title, rows in (("waiting for retry", waiting), ("failed", failed)):
        if rows:
            out.print(f"{title} (newest first):", markup=False)
        for p in rows:
            when = f"  next try {_when(p.next_attempt_at)}" if p in waiting else ""
            out.print(
                f"  {p.state:<8} {p.email}  day {p.period}  attempts {p.attempts}{when}\n"
                f"           server reply: {p.error or '-'}",
                markup=False,
            )


def _subscribers_line(
    settings: Settings, st: store.Status, emails: list[str] | None, file_error: str | None
) -> str:
    if emails is None:
        return f"subscribers: {st.subscribers} synced; warning: {file_error}"
    name = settings.subscribers_path.name
    pending = st.not_synced or []
    if not pending:
        return f"subscribers: {len(emails)} in {name}, {st.subscribers} synced"
    shown = ", ".join(pending[:10]) + (
        f" and {len(pending) - 10} more" if len(pending) > 10 else ""
    )
    synced = len(emails) - len(pending)
    return (
        f"subscribers: {len(emails)} in {name}, {synced} synced yet; not synced: {shown} "
        "(the next `digestbot send` or daemon run syncs them)"
    )


def _delivery_line(health: DeliveryHealth | None) -> str:
    if health is None:
        return "delivery: nothing recorded yet"
    if health.failing:
        return (
            f"delivery: FAILING since {_when(health.failing_since)}, "
            f"{health.errors_in_a_row} run(s) in a row; last error {_when(health.last_error_at)}: "
            f"{health.last_error}"
        )
    line = f"delivery: ok, the server last answered {_when(health.last_ok_at)}"
    if health.last_error_at is not None:
        line += f" (earlier error {_when(health.last_error_at)}: {health.last_error})"
    return line


@cli.command(cls=_Command)
def retry(
    email: Annotated[
        str | None,
        typer.Argument(metavar="EMAIL", help="Only this subscriber's digests.", show_default=False),
    ] = None,
    failed_only: Annotated[
        bool,
        typer.Option(
            "--failed-only", help="Requeue failed digests only; deferred ones keep their time."
        ),
    ] = False,
) -> None:
    """Make failed and deferred digests due now, so the next `digestbot send` or daemon run delivers them.

    Failed digests go back to planned; deferred ones keep their attempts but wait no longer. Use it
    after fixing the mail relay. With --failed-only, deferred digests keep their retry time.

    Example: digestbot retry ada@example.org
    """
    with _errors():
        settings = _settings()
        engine = app.database(settings, create=False)
        ids = None
        if email is not None:
            ids = pipeline.subscriber_ids(engine, [email])
            if not ids:
                raise ConfigError(f"no digests recorded for {email}", field="EMAIL")
        n = pipeline.requeue(engine, subscriber_ids=ids, now=_now(), failed_only=failed_only)
        what = (
            f"{n.failed} failed digest(s)"
            if failed_only
            else f"{n.failed} failed and {n.deferred} deferred digest(s)"
        )
        out.print(
            f"requeued {what}; run `digestbot send --no-fetch` to deliver them now", markup=False
        )


@cli.command()
def check(
    smtp: Annotated[
        bool,
        typer.Option(
            "--smtp",
            help="Also connect and log in to the SMTP server, and fetch each source once.",
        ),
    ] = False,
) -> None:
    """Validate the settings, the subscribers file and every query; exits 2 on the first problem.

    With --smtp, also connects and logs in to the SMTP server and fetches each source once,
    sending and storing nothing, and says what works and what does not.

    Example: digestbot check --smtp
    """
    with _errors():
        settings = _settings()
        out.print("settings: ok", markup=False)
        config = app.load_config(settings)
        specs = config.subscribers
        queries = count_queries(sum(len(sp.keywords) + len(sp.authors) for sp in specs))
        exclusions = count_exclusions(sum(len(sp.exclude) for sp in specs))
        out.print(
            f"subscribers: {len(specs)} in {settings.subscribers_path}, {queries}, {exclusions}: ok",
            markup=False,
        )
        for sp in specs:
            out.print(f"  {sp.email}: {sp.describe()}", markup=False)
        named = app.make_sources(settings, config.sources)  # what send builds: same checks
        out.print(f"sources: {len(named)}: ok", markup=False)
        for spec in config.sources:
            where = app.source_location(settings, spec)
            out.print(f"  {spec.name}: {spec.kind} from {where}", markup=False)
        for warning in unmatchable(config):  # a query no configured source can satisfy
            err.print(f"warning: {warning}", markup=False)
        app.mail_context(settings)
        backend = app.make_backend(settings)  # a file backend checks its folder here
        _warn_unsubscribed(settings, [sp.email for sp in specs])
        if not smtp:
            backend.close()
            return
        problems = 0
        for source in named:
            try:
                result = source.source.fetch_days(today=_now().date(), lookback=0)
                failed = result.error()
                if failed is not None:
                    raise failed
                out.print(
                    f"source {source.name}: ok ({_papers(len(result.papers))} today from "
                    f"{source.location})",
                    markup=False,
                )
            except FetchError as exc:
                problems += 1
                err.print(f"source {source.name}: FAILED: {exc}", markup=False)
        if settings.mail_backend != "smtp":
            out.print(
                f"mail: backend is {settings.mail_backend!r}, no SMTP server to check", markup=False
            )
        else:
            try:
                backend.open()  # type: ignore[attr-defined]
                login = f", logged in as {settings.smtp_username}" if settings.smtp_username else ""
                out.print(
                    f"smtp: ok ({settings.smtp_host}:{settings.smtp_port}, {settings.smtp_security}{login})",
                    markup=False,
                )
            except DeliverySetupError as exc:
                problems += 1
                err.print(f"smtp: FAILED: {exc}", markup=False)
            finally:
                backend.close()
        if problems:
            raise typer.Exit(1)


def _warn_unsubscribed(settings: Settings, emails: list[str]) -> None:
    """`check`: a warning (not an error) for people in the file who unsubscribed."""
    try:
        engine = app.database(settings, create=False)
    except DigestbotError:
        return  # no database (yet): nobody has unsubscribed
    gone = pipeline.unsubscribed(engine, emails)
    if gone:
        err.print(
            f"warning: {len(gone)} subscriber(s) in {settings.subscribers_path} unsubscribed "
            f"and get nothing: {', '.join(gone)} (remove them from the file, or "
            "`digestbot resubscribe EMAIL` if they asked to come back)",
            markup=False,
        )


def _address(value: str) -> str:
    try:
        return check_address(value)
    except AddressError as exc:
        raise ConfigError(f"{value!r} {exc}", field="EMAIL") from None


@cli.command(cls=_Command)
def unsubscribe(
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="The address to unsubscribe.")],
) -> None:
    """Put an address on the suppression list: nothing more is planned or sent to it.

    Works even while the address is still in the subscribers file; digests already planned or
    waiting for a retry are not sent. Running it again changes nothing.

    Example: digestbot unsubscribe ada@example.org
    """
    with _errors():
        settings = _settings()
        address = _address(email)
        engine = app.database(settings)
        entry = pipeline.unsubscribe(engine, address, method=UnsubscribeMethod.OPERATOR, now=_now())
        out.print(
            f"{address} is unsubscribed (since {_when(entry.at)}, {entry.method})", markup=False
        )


@cli.command(cls=_Command)
def resubscribe(
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="The address to resubscribe.")],
) -> None:
    """Take an address off the suppression list; it gets digests again if it is in the file.

    Example: digestbot resubscribe ada@example.org
    """
    with _errors():
        settings = _settings()
        address = _address(email)
        key = address_key(address)
        in_file = any(address_key(sp.email) == key for sp in app.load_people(settings))
        engine = app.database(settings)
        if pipeline.resubscribe(engine, address) is not pipeline.Resubscribed.DONE:
            out.print(f"{address} was not unsubscribed; nothing changed", markup=False)
            return
        if in_file:
            out.print(f"{address} is subscribed again", markup=False)
        else:
            out.print(
                f"{address} was removed from the suppression list, but it is not in the "
                f"subscribers file ({settings.subscribers_path}), so it gets nothing",
                markup=False,
            )


@cli.command()
def serve(
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port to listen on.")
    ] = 8000,
) -> None:
    """Run the unsubscribe web endpoint (GET page, RFC 8058 one-click POST, /healthz).

    Put it behind a TLS reverse proxy at the address of DIGESTBOT_UNSUBSCRIBE_URL. Needs
    DIGESTBOT_UNSUBSCRIBE_SECRET. Stops on SIGINT or SIGTERM.

    Example: digestbot serve --host 127.0.0.1 --port 8000
    """
    from digestbot.web import run_server

    with _errors():
        settings = _settings()
        run_server(settings, host=host, port=port)


@cli.command(cls=_Command)
def match(
    query: Annotated[
        str,
        typer.Argument(
            metavar="QUERY", help="A filter query, e.g. '\"speculative decoding\" -survey'."
        ),
    ],
    date_: Annotated[
        str | None, _date_option("Only papers featured on this day (YYYY-MM-DD).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Run one query against the stored papers and list what it matches, and why.

    Use it to tune a filter before saving it in the subscribers file.

    Example: digestbot match 'title:diffusion -survey' --date 2026-03-02
    """
    with _errors():
        settings = _settings()
        day = _parse_date(date_)
        engine = app.database(settings, create=False)
        found = pipeline.match_stored(engine, query=query, day=day)
        by_id, matches = found.papers, found.matches
        if not by_id:
            when = f"featured on {day.isoformat()} " if day is not None else ""
            err.print(
                f"no papers {when}are stored yet; run "
                f"`digestbot fetch{f' --date {day.isoformat()}' if day else ''}` first",
                markup=False,
            )
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {
                            "arxiv_id": m.arxiv_id,
                            "title": by_id[m.arxiv_id].title,
                            "score": round(m.score, 4),
                            "upvotes": m.upvotes,
                            "featured_at": by_id[m.arxiv_id].featured_at.isoformat(),
                            "matched": list(m.matched),
                            "title_highlights": [
                                by_id[m.arxiv_id].title[a:b] for a, b in m.title_spans
                            ],
                            "abstract_highlights": [
                                by_id[m.arxiv_id].summary[a:b] for a, b in m.summary_spans
                            ],
                            **_evidence_json(m, by_id[m.arxiv_id]),
                        }
                        for m in matches
                    ]
                )
            )
            return
        table = Table(
            "arXiv id",
            "score",
            "upvotes",
            "title",
            "matched words",
            title=f"{len(matches)} of {len(by_id)} stored papers match {query!r}",
        )
        for m in matches:
            p = by_id[m.arxiv_id]
            why = matching.evidence(m.matched, p)
            words = sorted(
                {p.title[a:b] for a, b in m.title_spans}
                | {p.summary[a:b] for a, b in m.summary_spans}
                | {p.authors[i] for i in why.authors}
                | {p.ai_keywords[i][a:b] for i, spans in why.keywords for a, b in spans},
                key=str.lower,
            )
            table.add_row(
                m.arxiv_id, f"{m.score:.2f}", str(m.upvotes), p.title, ", ".join(words[:8])
            )
        out.print(table)


def _evidence_json(m: matching.Match, paper: matching.PaperDoc) -> dict[str, list[str]]:
    """The authors and feed keywords behind a match, for `match --json`."""
    found = matching.evidence(m.matched, paper)
    return {
        "author_highlights": [paper.authors[i] for i in found.authors],
        "keyword_highlights": [
            paper.ai_keywords[i][a:b] for i, spans in found.keywords for a, b in spans
        ],
    }


@cli.callback(invoke_without_command=True)
def _version(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"digestbot {__version__}", markup=False)
        raise typer.Exit(0)
