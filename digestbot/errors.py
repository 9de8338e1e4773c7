"""The one error tree. Only cli.py turns these into messages and exit codes."""

from __future__ import annotations

from datetime import date


class DigestbotError(Exception):
    """Base of every error digestbot raises on purpose."""

    exit_code = 1


class ConfigError(DigestbotError):
    """Bad configuration or usage: a settings value, the subscribers file, a query (exit 2)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        subscriber: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.subscriber = subscriber
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.subscriber:
            where.append(f"subscriber {self.subscriber}")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class QueryError(ConfigError):
    """A filter query that does not parse; `column` is 1-based within `query`."""

    def __init__(self, reason: str, *, query: str, column: int | None = None) -> None:
        self.reason = reason
        self.query = query
        self.column = column
        at = f" at column {column}" if column is not None else ""
        super().__init__(f"{reason}{at} in query {query!r}")


class FetchError(DigestbotError):
    """A feed could not be fetched or its response is unusable; names the URL."""


class FeedUnavailableError(FetchError):
    """The feed did not answer usefully after every retry (connection, timeout, 429, 5xx).

    Unlike a rejected response, this is not about one day: fetching further days would only
    wait through the same retries again.
    """


class PartialFetchError(FetchError):
    """Some days of a lookback window failed; the good days were stored. `days` are the bad ones."""

    def __init__(self, message: str, *, days: tuple[date, ...]) -> None:
        self.days = days
        super().__init__(message)


class DeliveryError(DigestbotError):
    """A message could not be delivered."""


class TemporaryDeliveryError(DeliveryError):
    """The server said try later (4xx), timed out, or dropped the connection: defer and retry."""


class PermanentDeliveryError(DeliveryError):
    """The server refused the message for good (5xx): fail the digest."""


class DeliverySetupError(DeliveryError):
    """The backend cannot work at all (server unreachable, login refused, TLS failure).

    `setting` names what the operator should check. No digest is marked as attempted.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.setting = setting
        hint = f" (check {setting})" if setting else ""
        super().__init__(f"{message}{hint}")


class DatabaseError(DigestbotError):
    """The database cannot be opened, created or written (exit 1).

    The message names the database (the SQLite file, or the URL without its password), the
    setting DIGESTBOT_DATABASE_URL and what to do. It carries only the driver's reason, never
    SQL parameters (paper data).
    """


class NoDatabaseError(DatabaseError):
    """A read-only command found no database to read; nothing was created."""


class TemplateError(ConfigError):
    """A digest template does not compile or fails to render; names the file and line (exit 2)."""


# -- across processes -------------------------------------------------------------------------
# A worker or planning process reports its error as (kind, message); the caller raises it again
# as the same kind, so its exit code and handling are those of the error in this process.


_KINDS: tuple[tuple[str, type[DigestbotError]], ...] = (
    ("setup", DeliverySetupError),  # before its base class: the first match names the kind
    ("config", ConfigError),
    ("fetch", FetchError),
    ("database", DatabaseError),
)


def portable(exc: DigestbotError) -> tuple[str, str]:
    """`exc` as (kind, message) for another process: `restored` raises it again there."""
    kind = next((name for name, cls in _KINDS if isinstance(exc, cls)), "error")
    return kind, str(exc)


def restored(kind: str, message: str) -> DigestbotError:
    """The error another process reported with `portable`, as the same kind (its message
    already says everything)."""
    return dict(_KINDS).get(kind, DigestbotError)(message)
