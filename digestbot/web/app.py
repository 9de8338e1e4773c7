"""Routes of the unsubscribe endpoint.

GET  /unsubscribe?token=T   a page naming the list and the masked address, with one button;
                            it changes nothing (mail scanners prefetch links).
POST /unsubscribe?token=T   unsubscribes: body `List-Unsubscribe=One-Click` (RFC 8058, sent by
                            mail clients without cookies) or the page's button; answers 200 with
                            a confirmation that has a "Resubscribe" button. Repeats are harmless.
POST /resubscribe?token=T   takes the address off the suppression list again, if it got there
                            through the web (one-click or page): an operator's unsubscribe
                            sticks, and the page names the list's address to write to.
GET  /healthz               200 "ok".

A missing or malformed token answers 400, a forged one or one of another list 403; nothing
changes. Pages are autoescaped Jinja2 templates (templates/web_page.html.j2); form actions are
relative, so the app works behind a proxy under any path prefix.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jinja2
import uvicorn
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from digestbot import app as front
from digestbot import pipeline, resources, tokens
from digestbot.errors import ConfigError
from digestbot.models import UnsubscribeMethod
from digestbot.settings import Settings

log = logging.getLogger("digestbot.web")

MAX_BODY = 64 * 1024
ONE_CLICK = ("List-Unsubscribe", "One-Click")
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

Clock = Callable[[], datetime]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def mask(address: str) -> str:
    """`ada.lovelace@example.org` → `a***@example.org`: enough to recognise, not to harvest."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def create_app(
    settings: Settings, *, engine: Engine | None = None, clock: Clock | None = None
) -> Starlette:
    """The ASGI app; opens (and migrates) the database of `settings` unless `engine` is given.

    Raises ConfigError when DIGESTBOT_UNSUBSCRIBE_SECRET is not set (no token could be checked).
    """
    if not settings.unsubscribe_secrets:
        raise ConfigError(
            "is required by `digestbot serve` (it checks the tokens in unsubscribe links)",
            field="DIGESTBOT_UNSUBSCRIBE_SECRET",
        )
    db = engine if engine is not None else front.database(settings)
    now = clock or _wall_clock
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.templates_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    page_template = env.get_template("web_page.html.j2")
    secrets = settings.unsubscribe_secrets
    list_id = settings.effective_list_id
    list_name = settings.list_name
    contact = settings.effective_unsubscribe_email

    def page(status: int, *, title: str, heading: str, lines: list[str], **extra: Any) -> Response:
        html = page_template.render(
            title=title,
            heading=heading,
            lines=lines,
            list_name=list_name,
            action=extra.get("action"),
            button=extra.get("button", ""),
            note=extra.get("note"),
        )
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def refused(exc: tokens.TokenError) -> Response:
        return page(
            exc.status,
            title="Link not valid",
            heading="This unsubscribe link does not work",
            lines=[
                f"{_capital(str(exc))}. Nothing was changed.",
                (
                    "Use the unsubscribe link of a recent digest from this list, "
                    f"or write to {contact} with the subject “unsubscribe”."
                ),
            ],
        )

    def token_of(request: Request) -> tuple[str, str]:
        token = request.query_params.get(tokens.TOKEN_PARAM, "")
        return token, tokens.check(token, secrets=secrets, list_id=list_id)

    def query(token: str) -> str:
        return "?" + urllib.parse.urlencode({tokens.TOKEN_PARAM: token})

    def unsubscribed_page(token: str, address: str) -> Response:
        return page(
            200,
            title="Unsubscribed",
            heading="You are unsubscribed",
            lines=[f"{mask(address)} will get no more digests from {list_name}."],
            action="resubscribe" + query(token),
            button="Resubscribe",
            note="Changed your mind? The button above subscribes this address again.",
        )

    async def unsubscribe_get(request: Request) -> Response:
        try:
            token, address = token_of(request)
        except tokens.TokenError as exc:
            return refused(exc)
        return page(
            200,
            title="Unsubscribe",
            heading=f"Unsubscribe from {list_name}?",
            lines=[f"Press Unsubscribe to stop {list_name} digests to {mask(address)}."],
            action=query(token),
            button="Unsubscribe",
        )

    async def unsubscribe_post(request: Request) -> Response:
        try:
            token, address = token_of(request)
        except tokens.TokenError as exc:
            return refused(exc)
        body = await _body(request)
        if body is None:
            return PlainTextResponse("request body too large", status_code=413, headers=HEADERS)
        method = (
            UnsubscribeMethod.ONE_CLICK if _is_one_click(request, body) else UnsubscribeMethod.PAGE
        )
        await run_in_threadpool(pipeline.unsubscribe, db, address, method=method, now=now())
        log.info(
            "unsubscribed %s (%s)",
            address,
            method,
            extra={"address": address, "method": str(method)},
        )
        return unsubscribed_page(token, address)

    async def resubscribe_post(request: Request) -> Response:
        try:
            token, address = token_of(request)
        except tokens.TokenError as exc:
            return refused(exc)
        done = await run_in_threadpool(pipeline.resubscribe, db, address, by_reader=True)
        if done is pipeline.Resubscribed.KEPT:
            return page(
                200,
                title="Still unsubscribed",
                heading="This address stays unsubscribed",
                lines=[
                    (
                        f"The list's operator unsubscribed {mask(address)} from {list_name}, "
                        "so this link cannot subscribe it again."
                    ),
                    f"To get digests again, write to {contact}.",
                ],
            )
        if done is pipeline.Resubscribed.DONE:
            log.info("resubscribed %s (web)", address, extra={"address": address, "method": "web"})
        return page(
            200,
            title="Subscribed again",
            heading="You are subscribed again",
            lines=[f"{mask(address)} gets digests from {list_name} again."],
            action="unsubscribe" + query(token),
            button="Unsubscribe",
        )

    async def unsubscribe(request: Request) -> Response:
        if request.method == "POST":
            return await unsubscribe_post(request)
        return await unsubscribe_get(request)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})

    return Starlette(
        routes=[
            Route("/unsubscribe", unsubscribe, methods=["GET", "POST"]),
            Route("/resubscribe", resubscribe_post, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


async def _body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _is_one_click(request: Request, body: bytes) -> bool:
    """The RFC 8058 POST: `List-Unsubscribe=One-Click` (form-urlencoded, or as a multipart field)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        return ONE_CLICK in fields
    return b"One-Click" in body and b"List-Unsubscribe" in body


def make_server(settings: Settings, *, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for the app (not started). No access log: URLs carry tokens."""
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=True,
        lifespan="off",
    )
    return uvicorn.Server(config)


def run_server(settings: Settings, *, host: str, port: int) -> None:
    """Serve the app until SIGINT or SIGTERM."""
    make_server(settings, host=host, port=port).run()
