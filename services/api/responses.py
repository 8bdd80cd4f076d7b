"""Every answer a route may give besides its success, for the OpenAPI (`responses=`).

A client, or a fuzzer such as schemathesis, reads the schema to learn what to expect: each
status a route can answer is listed with the shape of its body (`ErrorDetail` for errors but
422, FastAPI's `HTTPValidationError` for 422).
"""

from typing import Any, Literal

from pydantic import BaseModel

from services.api.auth import AuthErrorBody
from shared.schemas import ErrorDetail

Responses = dict[int | str, dict[str, Any]]

VALIDATION_ERROR = {"$ref": "#/components/schemas/HTTPValidationError"}
"""FastAPI's 422 body: `detail`, a list of errors each naming its field in `loc`."""


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]


def error(status: int, description: str) -> Responses:
    return {status: {"model": ErrorDetail, "description": description}}


def invalid(description: str) -> Responses:
    """A documented 422 with FastAPI's own error shape, which names the field in `loc`."""
    content = {"application/json": {"schema": VALIDATION_ERROR}}
    return {422: {"description": description, "content": content}}


NOT_READY: Responses = {503: {"model": Readiness, "description": "MongoDB or RabbitMQ unreachable"}}

UNAUTHORIZED: Responses = {
    401: {
        "model": AuthErrorBody,
        "description": "No valid bearer token (not when the API runs open): `error` names what is "
        "wrong (missing_token, malformed_token, bad_signature, expired_token, wrong_audience, "
        "...); nothing is stored",
        "headers": {
            "WWW-Authenticate": {
                "description": 'The challenge: `Bearer realm="chat"`, and for a token that was '
                'sent `error="invalid_token"` with an `error_description`',
                "required": True,
                "schema": {"type": "string"},
            }
        },
    }
}
KEYS_OR_DATABASE_UNAVAILABLE = error(
    503, "MongoDB or the identity provider's keys are unavailable: try again shortly"
)
PROTECTED: Responses = {**UNAUTHORIZED, **KEYS_OR_DATABASE_UNAVAILABLE}
"""Every route that needs a token."""
TOO_LARGE = error(413, "The body is larger than MAX_BODY_BYTES; it was not read")
RATE_LIMITED: Responses = {
    429: {
        "model": ErrorDetail,
        "description": "Over RATE_LIMIT_PER_MINUTE or over MAX_ACTIVE_REPLIES; nothing is stored",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait: until the rolling minute admits a request again "
                "(rate), or 5 (active replies: when one will finish cannot be told)",
                "required": True,
                "schema": {"type": "integer"},
            }
        },
    }
}
