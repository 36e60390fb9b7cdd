"""Request body limits: refuse bodies over a size with 413, whether declared or streamed."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from splitvault.app.server.refusals import error_response


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body grows past the limit."""


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.limit:
                    response = too_large(self.limit) if declared >= 0 else _bad_length()
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


def too_large(limit: int) -> JSONResponse:
    """The 413 answer."""
    return error_response(413, "TooLarge", f"request body is over the limit of {limit} bytes")


def _bad_length() -> JSONResponse:
    return error_response(400, "BadRequest", "Content-Length is not a number")
