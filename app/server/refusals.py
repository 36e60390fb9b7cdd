"""Refusals: every expected error of the server becomes one JSON answer ``{ErrorCode, Message}``.

Handlers raise ``Refusal``; the app's exception handler renders it. Store failures become 503
(``StoreUnavailable``, worth retrying) or 409 (a write-once conflict); neither carries the
driver's text, which can name hosts and paths the client has no business seeing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.responses import JSONResponse

from splitvault.domain import wire
from splitvault.domain.errors import Conflict, NotFound
from splitvault.domain.ports import StoreFailure

log = logging.getLogger("splitvault.server")


class Refusal(Exception):
    """An expected refusal, turned into ``{"ErrorCode", "Message"}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error answer."""
    return JSONResponse(
        {wire.FIELD_ERROR_CODE: code, wire.FIELD_MESSAGE: message},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def store_refusal(problem: StoreFailure) -> Refusal:
    """The answer for a store failure; the operator's log gets the detail."""
    if isinstance(problem, Conflict):
        return Refusal(409, wire.ERROR_FRAGMENT_EXISTS, problem.describe())
    if isinstance(problem, NotFound):
        return Refusal(404, "NotFound", problem.describe())
    log.error("store failed: %s", problem.describe())
    return Refusal(
        503,
        "StoreUnavailable",
        "the server's store is not answering; try again shortly",
        {"Retry-After": "1"},
    )
