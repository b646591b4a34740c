"""Slow clients: uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request head.

uvicorn alone waits for a request head without end (its keep-alive timer is cancelled by any byte
that arrives), and its ``limit_concurrency`` counts open connections, idle ones too: a few dozen
clients that trickle a header byte now and then would hold every slot and the server would answer
real requests 503 (slowloris). Here:

- a connection must deliver each whole request head within ``head_timeout_s`` of being opened (or of
  its previous response, on a kept-alive connection); otherwise it is closed;
- requests are admitted by the service itself (``ServeConfig.queue``, answered 503 past it), so open
  connections take no request's place; open connections are capped separately at
  ``max_connections``, past which a new one is closed at once.

A request's body has its own limit (``ServeConfig.body_timeout_s``, answered 408).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and no connection count in request admission."""

    head_timeout_s: float = 10.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.limit_concurrency = None  # requests are admitted by the service (ServeConfig.queue)
        self.head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._await_head()

    def _await_head(self) -> None:
        """Start the clock for the next request head (``self.cycle`` changes when it arrives)."""
        self._cancel_head_timer()
        self.waiting_since_cycle = self.cycle
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _head_late(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_head_timer(self) -> None:
        if getattr(self, "head_timer", None) is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.head_timer is not None and self.cycle is not self.waiting_since_cycle:
            self._cancel_head_timer()  # a whole head has arrived

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_head()  # before the next (maybe pipelined) request is parsed
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def guarded_protocol(head_timeout_s: float, max_connections: int) -> type[GuardedH11]:
    """``GuardedH11`` with these limits, for ``uvicorn.Config(http=...)``."""
    return type("GuardedH11", (GuardedH11,), {"head_timeout_s": head_timeout_s, "max_connections": max_connections})
