"""The small ASGI app of `digestbot serve`: unsubscribe pages, the RFC 8058 one-click POST, /healthz.

Starlette on uvicorn. `create_app(settings)` builds the app (nothing happens at import time);
`run_server` serves it. The app calls the pipeline's unsubscribe functions; tokens are checked
by `digestbot.tokens`, the one home of issuing and checking them.
"""

from __future__ import annotations

from digestbot.web.app import create_app, make_server, run_server

__all__ = ["create_app", "make_server", "run_server"]
