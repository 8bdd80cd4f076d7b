"""Every answer a route may give besides its success, for the OpenAPI (`responses=`).

A client, or a fuzzer such as schemathesis, reads the schema to learn what to expect: each
status a route can answer is listed with the shape of its body (`ErrorDetail` for errors but
422, FastAPI's `HTTPValidationError` for 422).
"""

from typing import Any, Literal

from pydantic import BaseModel

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


DATABASE_UNAVAILABLE = error(503, "MongoDB is unavailable: try again shortly")
NOT_READY: Responses = {503: {"model": Readiness, "description": "MongoDB or RabbitMQ unreachable"}}
