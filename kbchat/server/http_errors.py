"""Errors on the wire: every failure becomes `{"error": {"message", "type", "code"}}` with a status.

A `KbchatError` takes its status and its `code` from its class (`exc.http_status`, `exc.code`), so
`kbchat.remote` can raise the same class on the other side (`kbchat.errors.error_class`). The host's own
refusals (bad input, auth, timeouts) are `ApiError`s with codes of their own.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kbchat.errors import KbchatError

log = logging.getLogger("kbchat.server")


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body; every body names a `code` (default "bad_request")."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str = "bad_request", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.code, self.headers)


def timeout_error(message: str) -> ApiError:
    return ApiError(504, message, "timeout", "timeout")


def error_body(message: str, type_: str, code: str = "bad_request") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def error_response(status: int, message: str, type_: str, code: str = "bad_request",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers)


def as_api_error(exc: BaseException) -> ApiError:
    """What the client is told about `exc`: a KbchatError by its class's status and code, anything
    unexpected as a logged 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, KbchatError):
        return ApiError(exc.http_status, str(exc), "invalid_request_error", exc.code)
    log.error("unexpected error in a worker", exc_info=exc)
    return _internal(exc)


def _internal(exc: BaseException) -> ApiError:
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Make every failure of a request, expected or not, an error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(KbchatError)
    async def _kbchat(_request: Request, exc: KbchatError) -> JSONResponse:
        return as_api_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_request(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error",
                              "not_found" if exc.status_code == 404 else "http_error", dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving a request")
        return _internal(exc).response()


def invalid_request(errors: Any) -> ApiError:
    """The error for a body FastAPI could not validate: unreadable JSON, no object, or bad fields."""
    broken = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if broken is not None:
        reason = (broken.get("ctx") or {}).get("error", "invalid JSON")
        return ApiError(400, f"malformed JSON body: {reason}", code="bad_json")
    whole = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
    if whole:  # no body, or not an object (e.g. a list, or JSON sent without its Content-Type)
        what = "missing" if whole[0].get("type") == "missing" else "not a JSON object"
        return ApiError(400, f"the request body is {what}: send a JSON object with "
                        "Content-Type: application/json", code="bad_json")
    return ApiError(422, "invalid request: " + "; ".join(_describe(e) for e in errors), code="invalid_request")


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    return f"{where or 'body'}: {error.get('msg', 'invalid')}"
