"""Mail: MIME message building (:mod:`digestbot.mail.message`) and delivery backends.

The message helpers are re-exported here; delivery backends live in their own modules and are
imported from there, so importing :mod:`digestbot.mail` never opens a connection or loads SMTP code.
"""

from __future__ import annotations

from digestbot.mail.message import build_message, dkim_sign, make_message_id

__all__ = ["build_message", "dkim_sign", "make_message_id"]
