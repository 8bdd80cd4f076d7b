"""Error answers that hold whatever a client sent: clear, small, and always encodable.

A 422 repeats the rejected input so a client sees what was wrong, but the input may be 1 MB, or
hold a lone surrogate (`"\\ud800"` is valid JSON yet cannot be written as UTF-8): strings are
cut to INPUT_PREVIEW_CHARS and their surrogates replaced, so every bad input gets its 422.
"""

import json
import re
from collections.abc import Sequence
from typing import Any

from fastapi import Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

INPUT_PREVIEW_CHARS = 100
"""How much of a rejected value an error repeats."""
CUT = "…"
SURROGATES = re.compile("[\ud800-\udfff]")
NOT_UTF8 = "JSON decode error: the body is not valid UTF-8"


def printable(text: str) -> str:
    """`text` as UTF-8 can carry it: each lone surrogate becomes U+FFFD."""
    return SURROGATES.sub("\ufffd", text)


def preview(value: Any) -> Any:
    """What an error may repeat of a rejected value: at most INPUT_PREVIEW_CHARS of it."""
    shown = _printable_tree(value)
    if isinstance(shown, str):
        return shown if len(shown) <= INPUT_PREVIEW_CHARS else shown[:INPUT_PREVIEW_CHARS] + CUT
    encoded = json.dumps(shown, ensure_ascii=False)
    return shown if len(encoded) <= INPUT_PREVIEW_CHARS else encoded[:INPUT_PREVIEW_CHARS] + CUT


def _printable_tree(value: Any) -> Any:
    """`value` as JSON can carry it: bytes decoded, lone surrogates replaced, at any depth."""
    if isinstance(value, bytes):
        return printable(value.decode("utf-8", "replace"))
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list | tuple):
        return [_printable_tree(item) for item in value]
    if isinstance(value, dict):
        return {printable(str(key)): _printable_tree(item) for key, item in value.items()}
    return jsonable_encoder(value)


def validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 `detail`, with each `input` cut down and every string encodable."""
    detail = []
    for error in errors:
        shown = _printable_tree({key: value for key, value in error.items() if key != "input"})
        if "input" in error:
            shown["input"] = preview(error["input"])
        detail.append(shown)
    return detail


async def validation_failed(request: Request, error: Exception) -> JSONResponse:
    """422 naming each wrong field and why, repeating only a preview of what was sent."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse(
        {"detail": validation_detail(error.errors())}, status.HTTP_422_UNPROCESSABLE_CONTENT
    )


async def http_error(request: Request, error: Exception) -> Response:
    """FastAPI's answer, except that a body which is not UTF-8 is bad JSON (422), not a 400."""
    assert isinstance(error, HTTPException)
    if error.status_code == status.HTTP_400_BAD_REQUEST and isinstance(
        error.__cause__, UnicodeDecodeError
    ):
        position = error.__cause__.start
        return await validation_failed(
            request,
            RequestValidationError(
                [{"type": "json_invalid", "loc": ("body", position), "msg": NOT_UTF8, "input": {}}]
            ),
        )
    return await http_exception_handler(request, error)
