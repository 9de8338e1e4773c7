"""Log output: human text lines, or one JSON object a line for journald and log shippers.

JSON lines hold `timestamp` (ISO 8601, UTC), `level`, `logger`, `event` (the message) and the
fields a call passes with `extra=` (subscriber, message_id, feed, counts...). Nothing here adds a
value of its own, so a secret never reaches a log unless a caller passed it (none does).
"""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Loggers whose INFO lines are per-step chatter (APScheduler: "Running job", "executed
# successfully" every minute; Alembic: each migration step at start): WARNING unless DEBUG.
CHATTY = ("apscheduler", "alembic")


def formatter(kind: str) -> logging.Formatter:
    """The formatter for DIGESTBOT_LOG_FORMAT (`text` or `json`)."""
    if kind == "json":
        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "message": "event"},
            timestamp=True,
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(*, level: str, kind: str) -> None:
    """Send every log line to stderr at `level`, formatted as `kind`; quiet the chatty libraries."""
    # Neither format shows the calling file and line, thread or process: with a line per digest
    # sent, not looking them up saves about a fifth of each line's cost (the logging HOWTO's
    # "Optimization" section names these switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(kind))
    logging.basicConfig(level=level, handlers=[handler])  # no-op if the root logger has handlers
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
