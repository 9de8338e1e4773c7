"""The `digestbot` command: parses arguments, calls pipeline functions, maps errors to exit codes.

Exit codes: 0 success; 1 a runtime failure (feed unusable, a delivery failed or was deferred);
2 a configuration or usage error. Only this module turns DigestbotError into messages.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.engine import Engine

from digestbot import __version__, app, pipeline, schedule, store
from digestbot.db import session_scope
from digestbot.errors import ConfigError, DeliverySetupError, DigestbotError, FetchError
from digestbot.models import DigestState
from digestbot.settings import Settings, load_settings

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
    cli()


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


def _fetch(settings: Settings, engine: Engine, *, today: date) -> pipeline.FetchSummary:
    summary = pipeline.fetch_and_store(
        engine,
        source=app.make_source(settings),
        feed_url=settings.feed_url,
        today=today,
        lookback=settings.lookback_days,
        clock=_now,
    )
    err.print(
        f"fetched {summary.fetched} papers from {settings.feed_url}: "
        f"{summary.new} new, {summary.updated} updated",
        markup=False,
    )
    return summary


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
) -> None:
    """Fetch the feed (today and the lookback days before it) and store new and changed papers.

    Prints how many papers were new and how many were updated. A broken feed response is
    rejected whole: nothing from it is stored, and the command exits 1.

    Example: digestbot fetch --date 2026-03-02
    """
    with _errors():
        settings = _settings()
        day = _parse_date(date_)
        engine = app.database(settings)
        summary = _fetch(settings, engine, today=day or _now().date())
        out.print(f"{summary.new} new, {summary.updated} updated", markup=False)


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
) -> None:
    """Fetch, then build and deliver every subscriber's digest now, whatever their schedule.

    One digest per subscriber per day: running it again the same day sends nothing new, and
    due retries of earlier digests go out too. Exits 1 when a digest failed or was deferred.

    Example: digestbot send --subscriber ada@example.org --dry-run
    """
    with _errors():
        settings = _settings()
        everyone = app.load_people(settings)
        only = (
            pipeline.select_subscribers(
                everyone, subscriber, source=str(settings.subscribers_path), option="--subscriber"
            )
            if subscriber
            else None
        )
        day = _parse_date(date_)
        delivery = app.delivery(settings)
        engine = app.database(settings)
        now = _now()
        today = day or now.date()
        if dry_run:
            fetched = (
                None
                if no_fetch
                else app.make_source(settings).fetch_window(
                    today=today, lookback=settings.lookback_days
                )
            )
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
            return
        if not no_fetch:
            _fetch(settings, engine, today=today)
        bar = _Bar()
        try:
            done = pipeline.send(
                engine,
                everyone,
                only=only,
                backend=delivery.backend,
                mail=delivery.mail,
                policy=delivery.policy,
                limiter=delivery.limiter,
                as_of=schedule.as_of(day, _now()),
                day=day,
                lookback=settings.lookback_days,
                clock=_now,
                on_start=bar.start,
                on_result=bar.advance,
            )
        except DeliverySetupError as exc:
            raise DigestbotError(f"delivery stopped, nothing more was attempted: {exc}") from exc
        finally:
            bar.stop()
            delivery.backend.close()
        plan, report = done.plan, done.report
        taken = f", taken over by another run {len(report.taken_over)}" if report.taken_over else ""
        out.print(
            f"planned {plan.planned} digests ({plan.skipped} with nothing new, "
            f"{plan.existing} already done for the day); sent {len(report.sent)}, "
            f"deferred {len(report.deferred)}, failed {len(report.failed)}{taken}",
            markup=False,
        )
        for email, reason in report.deferred:
            err.print(f"deferred {email}: {reason} (will retry)", markup=False)
        for email, reason in report.failed:
            err.print(f"failed {email}: {reason}", markup=False)
        for email, reason in report.taken_over:
            err.print(f"taken over by another run {email}: {reason}", markup=False)
        if not report.ok:
            raise typer.Exit(1)


class _Bar:
    """A progress bar on a terminal for runs of two digests or more; nothing otherwise."""

    def __init__(self) -> None:
        self.bar: Progress | None = None

    def start(self, total: int) -> None:
        if total < 2 or not sys.stderr.isatty():
            return
        self.bar = Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
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
            f"fetched {result.fetched} papers from {settings.feed_url} (not stored)", markup=False
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
    out.print(
        f"{len(result.rows)} digests would be planned; {result.existing} already done for the day",
        markup=False,
    )


@cli.command()
def preview(
    email: Annotated[str, typer.Argument(help="The subscriber's email address.")],
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
    missed days are coalesced into one digest. Only one daemon runs per database. SIGTERM or
    SIGINT stops it cleanly after the message in hand; SIGHUP reloads the subscribers file.

    Example: digestbot run
    """
    from digestbot.daemon import Daemon

    with _errors():
        settings = _settings()
        specs = app.load_people(settings)
        delivery = app.delivery(settings)
        engine = app.database(settings)
        Daemon(settings=settings, engine=engine, specs=specs, delivery=delivery).run_forever()


@cli.command()
def status() -> None:
    """Show the last fetch, papers stored, digests by state, and deferred or failed digests with reasons.

    Example: digestbot status
    """
    with _errors():
        settings = _settings()
        engine = app.database(settings, create=False)
        with session_scope(engine) as s:
            st = store.status(s)
            sent_papers = store.sent_paper_count(s)
        last = st.last_fetch
        if last is None:
            out.print("last fetch: never (run `digestbot fetch`)", markup=False)
        else:
            outcome = (
                f"ok, {last.new_count} new, {last.updated_count} updated"
                if last.ok
                else f"FAILED: {last.error}"
            )
            out.print(
                f"last fetch: {last.started_at:%Y-%m-%d %H:%M} UTC from {last.feed_url}: {outcome}",
                markup=False,
            )
            if not last.ok and st.last_good_fetch is not None:
                out.print(
                    f"last good fetch: {st.last_good_fetch.started_at:%Y-%m-%d %H:%M} UTC",
                    markup=False,
                )
        out.print(f"papers stored: {st.papers}", markup=False)
        out.print(f"active subscribers: {st.subscribers}", markup=False)
        states = ", ".join(f"{k} {v}" for k, v in sorted(st.digests_by_state.items())) or "none yet"
        out.print(f"digests: {states}; papers mailed: {sent_papers}", markup=False)
        if st.problems:
            out.print("deferred and failed digests (newest first):", markup=False)
            for p in st.problems:
                when = (
                    f", next try {p.next_attempt_at:%Y-%m-%d %H:%M} UTC"
                    if p.next_attempt_at and p.state == DigestState.DEFERRED
                    else ""
                )
                out.print(
                    f"  {p.state:<8} {p.email}  day {p.period}  attempts {p.attempts}{when}\n"
                    f"           server reply: {p.error or '-'}",
                    markup=False,
                )


@cli.command()
def retry(
    email: Annotated[
        str | None, typer.Argument(help="Only this subscriber's failed digests.")
    ] = None,
) -> None:
    """Requeue failed digests so the next `digestbot send` or daemon run delivers them again.

    Example: digestbot retry ada@example.org
    """
    with _errors():
        settings = _settings()
        engine = app.database(settings)
        ids = None
        if email is not None:
            ids = pipeline.subscriber_ids(engine, [email])
            if not ids:
                raise ConfigError(f"no digests recorded for {email}", field="EMAIL")
        n = pipeline.requeue_failed(engine, subscriber_ids=ids, now=_now())
        out.print(
            f"requeued {n} failed digest(s); run `digestbot send --no-fetch` to deliver them now",
            markup=False,
        )


@cli.command()
def check(
    smtp: Annotated[
        bool,
        typer.Option(
            "--smtp", help="Also connect and log in to the SMTP server, and fetch the feed once."
        ),
    ] = False,
) -> None:
    """Validate the settings, the subscribers file and every query; exits 2 on the first problem.

    With --smtp, also connects and logs in to the SMTP server and fetches the feed once, sending
    and storing nothing, and says what works and what does not.

    Example: digestbot check --smtp
    """
    with _errors():
        settings = _settings()
        out.print("settings: ok", markup=False)
        specs = app.load_people(settings)
        queries = sum(len(sp.keywords) + len(sp.exclude) + len(sp.authors) for sp in specs)
        out.print(
            f"subscribers: {len(specs)} in {settings.subscribers_path}, {queries} queries: ok",
            markup=False,
        )
        for sp in specs:
            out.print(f"  {sp.email}: {sp.describe()}", markup=False)
        app.mail_context(settings)
        if not smtp:
            return
        problems = 0
        try:
            papers = app.make_source(settings).fetch_window(today=_now().date(), lookback=0)
            out.print(
                f"feed: ok ({len(papers)} papers today from {settings.feed_url})", markup=False
            )
        except FetchError as exc:
            problems += 1
            err.print(f"feed: FAILED: {exc}", markup=False)
        backend = app.make_backend(settings)
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


@cli.command()
def match(
    query: Annotated[
        str, typer.Argument(help="A filter query, e.g. '\"speculative decoding\" -survey'.")
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
            words = sorted(
                {p.title[a:b] for a, b in m.title_spans}
                | {p.summary[a:b] for a, b in m.summary_spans},
                key=str.lower,
            )
            table.add_row(
                m.arxiv_id, f"{m.score:.2f}", str(m.upvotes), p.title, ", ".join(words[:8])
            )
        out.print(table)


@cli.callback(invoke_without_command=True)
def _version(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"digestbot {__version__}", markup=False)
        raise typer.Exit(0)
