"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.

Every failure a client can cause (bad JSON, wrong types, unknown model, limits) is answered in
this one shape, so OpenAI client libraries raise their usual typed exceptions.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from softprompt.core.errors import AdapterError, RequestError, SoftPromptError

log = logging.getLogger(__name__)

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


# Every character str.splitlines() breaks on (as softprompt.core.errors escapes them).
_LINE_BREAKS = str.maketrans(
    {c: c.encode("unicode_escape").decode() for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
)
_FIELD = re.compile(r"^[A-Za-z0-9_]{1,64}$")
SHOWN_CHARS = 40  # of a client's own key (an unknown field, a logit_bias key) quoted in a message


def one_line(text: str) -> str:
    """Line breaks escaped, and lone surrogates too (JSON bodies are UTF-8): one printable line."""
    text = text.translate(_LINE_BREAKS)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The one error shape; the message is always one line, whatever client text it quotes."""
    param = None if param is None else one_line(param)
    return {
        "error": {
            "message": one_line(message) or "error",
            "type": TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


async def send_error(
    send: Any, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer from a plain ASGI middleware (no FastAPI request yet) in the same OpenAI shape."""
    body = json.dumps(error_body(status, message, code=code)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# Fields that take one of several shapes: pydantic reports a failure per shape, which reads badly.
SHAPES = {
    "prompt": "prompt: must be a string, a list of strings, a list of token ids or a list of token-id lists, "
    "none of them empty",
}


def _validation(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "the request body is not valid JSON", code="invalid_json")
    if any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        if isinstance(getattr(exc, "body", None), bytes):  # not parsed: the content type is not JSON
            message = "the request body must be JSON sent with the header 'Content-Type: application/json'"
            return error_response(400, message, code="invalid_json")
        return error_response(400, "the request body must be a JSON object", code="invalid_json")
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    loc = [_shown(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None  # the top-level field, as OpenAI reports it
    if param in SHAPES:
        return error_response(400, SHAPES[param], param=param, code="invalid_value")
    message = f"{'.'.join(loc)}: {first.get('msg')}" if loc else str(first.get("msg"))
    return error_response(400, message, param=param, code="invalid_value")


def _shown(part: object) -> str:
    """A location part as a message quotes it: a field name or index as is; a client's own key
    (an unknown field, a logit_bias key) quoted, escaped and cut, since it may hold anything."""
    text = str(part)
    if isinstance(part, int) or _FIELD.match(text):
        return text
    cut = text[:SHOWN_CHARS] + ("..." if len(text) > SHOWN_CHARS else "")
    return json.dumps(cut)


def _http(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc.__cause__, (UnicodeDecodeError, RecursionError)):  # FastAPI's "error parsing the body"
        message = "the request body is not valid JSON (it must be UTF-8 and not nested too deeply)"
        return error_response(400, message, code="invalid_json")
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "internal error"
    return error_response(status, str(detail))


def _api(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, APIError):
        return error_response(500, "internal error")
    return error_response(exc.status, exc.message, exc.param, exc.code)


def _library(request: Request, exc: Exception) -> JSONResponse:
    status = 400 if isinstance(exc, (RequestError, AdapterError)) else 500
    return error_response(status, str(exc))


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(500, "internal server error", code="internal_error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(APIError, _api)
    app.add_exception_handler(SoftPromptError, _library)
    app.add_exception_handler(Exception, _unexpected)
