"""What keeps cheap clients from taking the service down: connection and read deadlines, a decode budget.

uvicorn's own `limit_concurrency` counts idle sockets with real work and answers plain text, and it has no
deadline for a request's headers, so a few dozen half-open sockets starved everyone. Here uvicorn's h11
protocol gets a header deadline (a connection that has not sent a whole request head in time is closed), a
connection limit well above the work queue (over it, the JSON 503 with Retry-After), and an ASGI middleware
puts a deadline on the body. Image decoding runs under a memory budget, so a burst of tiny, huge-canvas
uploads waits its turn (or gets the 503) instead of decoding all at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

RETRY_AFTER = "1"


def busy_response(reason: str) -> Any:
    """The one overload answer: JSON 503 with Retry-After (closing the connection)."""
    body = json.dumps({"error": f"server busy: {reason}; retry in {RETRY_AFTER} s"}).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", RETRY_AFTER.encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
    return app


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head and a limit on open connections."""

    header_timeout: float = 10.0
    max_connections: int = 1024

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            self.app = busy_response("too many open connections")  # this connection's request only
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()  # type: ignore[union-attr]
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # no whole request head in time (idle or slow): free the connection

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # the next request's head has its own deadline (armed before a pipelined one is read)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_settings(header_timeout: float, max_connections: int) -> dict[str, Any]:
    """uvicorn settings of the service: the guarded protocol and no `limit_concurrency` (its plain-text 503
    counted idle sockets as work; the work queue and the connection limit are separate here)."""
    protocol = type("ServiceH11Protocol", (GuardedH11Protocol,),
                    {"header_timeout": float(header_timeout), "max_connections": int(max_connections)})
    return {"http": protocol, "timeout_keep_alive": 5, "limit_concurrency": None}


class BodyDeadline:
    """ASGI middleware: a request body must arrive whole within `timeout` seconds of the request (408)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline, done = loop.time() + self.timeout, False

        async def timed() -> Message:
            nonlocal done
            if done:  # the body is in: later receives wait for a disconnect, as long as the response takes
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTimeout(f"request body not received within {self.timeout:g} s") from None
            done = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        await self.app(scope, timed, send)


class BodyTimeout(Exception):
    """The client did not send its body in time."""


class DecodeBudget:
    """Bytes of decoded pixels allowed at once across all requests; a decode waits (at most `timeout`) for
    its share. One image larger than the budget takes the whole budget."""

    def __init__(self, budget: int, timeout: float) -> None:
        self.budget, self.timeout = int(budget), timeout
        self._free = self.budget
        self._cond = threading.Condition()

    def acquire(self, cost: int) -> int | None:
        """The share taken (give it back with `release`), or None when it was not free within the timeout."""
        cost = max(1, min(int(cost), self.budget))
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= cost, self.timeout):
                return None
            self._free -= cost
            return cost

    def release(self, cost: int) -> None:
        with self._cond:
            self._free += cost
            self._cond.notify_all()
