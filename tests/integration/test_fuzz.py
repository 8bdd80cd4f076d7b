"""Fuzzing: schemathesis against the API's own OpenAPI, every operation, valid and invalid
bodies, headers and path parameters, with a valid token, a garbage one and none.

Fails on any 5xx, any answer the OpenAPI does not describe (status, headers, body schema,
content type), any document a refused request left in MongoDB, and any operation tried fewer
times than its minimum. Prints how many cases ran, in all and per operation.
"""

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from pymongo import MongoClient
from pymongo.database import Database as SyncDatabase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from shared.store.database import Document
from tests.infra import Deployment, deployment, rabbitmq, service_env
from tests.tokens import TEST_SECRET, hs256

EXAMPLES_PER_RUN = 40
"""Per operation, generation mode and kind of token."""
MIN_CASES_PER_OPERATION = 200
"""For an operation that takes input (of the 240 tried: 2 modes x 3 tokens x 40 examples)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
LIMIT_COLLECTIONS = {"rate_limits", "websockets"}
"""Bookkeeping of the limits, not data a request stores."""


@pytest.fixture(scope="module")
def fuzz_stack(log_dir: Path, mongodb_url: str, model_url: str) -> Iterator[Deployment]:
    """An authenticated stack of its own: every document in its database came from here."""
    with rabbitmq("chat-test-fuzz") as own_broker:
        env = {**service_env(mongodb_url, own_broker, model_url), "AUTH_JWT_SECRET": TEST_SECRET}
        with deployment("fuzz", log_dir, env, own_broker, responders=1, apis=1) as running:
            yield running


@pytest.fixture(scope="module")
def fuzz_database(fuzz_stack: Deployment) -> Iterator[SyncDatabase[Document]]:
    client: MongoClient[Document] = MongoClient(fuzz_stack.mongodb_url)
    try:
        yield client[fuzz_stack.mongodb_db]
    finally:
        client.close()


def stored(database: SyncDatabase[Document]) -> int:
    return sum(
        database[name].count_documents({})
        for name in database.list_collection_names()
        if name not in LIMIT_COLLECTIONS
    )


def authorizations() -> list[str | None]:
    """A valid token, a garbage one and none: made when the test runs, so that a valid token
    made when the suite was collected cannot have expired by the time it is sent."""
    return [f"Bearer {hs256('fuzzer', ttl=3600)}", "Bearer garbage.garbage.garbage", None]


def minimum_cases(operation: schemathesis.APIOperation[Any, Any, Any, Any]) -> int:
    """An operation without parameters or body has one request to make, once per token."""
    takes_input = len(operation.body) > 0 or any(True for _ in operation.iter_parameters())
    return MIN_CASES_PER_OPERATION if takes_input else len(authorizations())


def fuzz(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    authorization: str | None,
    base_url: str,
    database: SyncDatabase[Document],
) -> Counter[int]:
    """Run one operation's generated cases; returns how many answers of each status came."""
    statuses: Counter[int] = Counter()

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_RUN,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        case.headers.pop("Authorization", None)
        if authorization is not None:
            case.headers["Authorization"] = authorization
        before = stored(database)
        response = case.call(base_url=base_url, timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            assert stored(database) == before, (
                f"{operation.label}: a refused request ({response.status_code}) left documents"
            )

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()  # Unsatisfiable: nothing invalid to make of an operation without parameters
    return statuses


def test_the_api_survives_its_own_schema_fuzzed(
    fuzz_stack: Deployment, fuzz_database: SyncDatabase[Document]
) -> None:
    base_url = fuzz_stack.api_urls[0]
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) >= 5
    statuses: Counter[int] = Counter()
    cases: dict[str, int] = {}
    for operation in operations:
        answered: Counter[int] = Counter()
        for mode in GenerationMode:
            for authorization in authorizations():
                answered += fuzz(operation, mode, authorization, base_url, fuzz_database)
        cases[operation.label] = answered.total()
        statuses += answered
    print(f"\nschemathesis: {statuses.total()} cases over {len(operations)} operations")
    print(f"answers: {dict(statuses)}; per operation: {cases}")
    too_few = {
        operation.label: cases[operation.label]
        for operation in operations
        if cases[operation.label] < minimum_cases(operation)
    }
    assert not too_few, f"operations tried fewer times than their minimum: {too_few}"
    assert statuses[401] and statuses[202], "both refused and accepted requests were tried"
