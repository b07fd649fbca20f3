"""Bad HTTP input against a running service on a devnet: schema-driven fuzzing of every operation of the
served OpenAPI document (schemathesis), oversized bodies, wrong methods, bad ids, unknown paths. Never a
5xx, and the service keeps answering afterwards.

tests/test_service_http.py already checks a list of malformed requests (status and JSON reason each); this
file adds the generated inputs and the sizes.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.chain import Chain
from tests.support.chaos import report, sized
from tests.support.database import migrate
from tests.support.service import RunningService, devnet_settings, running_service

MAX_EXAMPLES = sized(150, 1000)  # per operation and mode
PATHS = ["/", "/health", "/nodes", "/active-proposals", "/proposals/1", "/votes", "/rounds/1", "/metrics"]


pytestmark = pytest.mark.devnet(proposals=2)  # `module_chain`: a private anvil for this module


@pytest.fixture(scope="module")
def svc(module_chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    anvil, devnet = module_chain
    db: Path = tmp_path_factory.mktemp("fuzz") / "dloop.db"
    # An idle automining chain makes no heads: with the default 30 s head timeout /health would rightly answer
    # 503 once the fuzzing has run that long. This module is about HTTP input, so the head stays "fresh".
    config = devnet_settings(
        anvil.ws_url, devnet, db, http_port=0, reconcile_interval=3600.0, head_timeout=3600.0
    )
    migrate(config)
    with running_service(config) as running:
        yield running


@pytest.fixture(scope="module")
def served_schema(svc: RunningService) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{svc.url}/schema/openapi.json")


def test_generated_requests_never_get_a_5xx_and_answers_match_the_schema(
    served_schema: schemathesis.BaseSchema,
) -> None:
    """Every operation of the served schema, `MAX_EXAMPLES` valid and as many invalid generated requests."""
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    sent: Counter[int] = Counter()  # answers by status class
    operations = _operations(served_schema)
    assert len(operations) >= 9, [op.label for op in operations]
    for operation, mode in itertools.product(operations, [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]):

        @given(operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case[Any]) -> None:
            response = case.call(timeout=10)
            sent[response.status_code // 100] += 1
            if response.status_code < 400:
                case.validate_response(response, checks=[*checks, response_schema_conformance])
                return
            # An error: never a 5xx, JSON with a reason, and the body the schema documents.
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
            content_type = response.headers.get("content-type") or [""]
            assert "json" in str(content_type), response.headers
            assert response.json()["reason"], response.text[:300]
            case.validate_response(response, checks=[response_schema_conformance])

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to get wrong (no parameters)
    report(
        f"http fuzz: {len(operations)} operations, {sum(sent.values())} generated requests, answers by class "
        f"{ {f'{k}xx': v for k, v in sorted(sent.items())} }"
    )
    assert sent[5] == 0


def test_error_answers_match_the_served_schema(served_schema: schemathesis.BaseSchema) -> None:
    operation = next(op for op in _operations(served_schema) if op.path.startswith("/proposals/"))
    (name,) = [p.name for p in operation.path_parameters]
    case = operation.Case(path_parameters={name: "abc"})
    case.call_and_validate(checks=[response_schema_conformance], timeout=10)


def _operations(schema: schemathesis.BaseSchema) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]


BAD_IDS = [
    ("/proposals/-1", 400),
    ("/proposals/abc", 400),
    ("/proposals/99999999999999999999999", 400),
    ("/proposals/0", 400),
    ("/proposals/1e3", 400),
    ("/proposals/%00", 400),
    ("/rounds/0", 400),
    ("/rounds/-5", 400),
    ("/rounds/xyz", 400),
    ("/rounds/99999999999999999999999", 400),
]


def test_bad_ids_wrong_methods_unknown_paths_and_big_bodies_get_a_json_4xx(svc: RunningService) -> None:
    problems = []
    with httpx.Client(base_url=svc.url, timeout=30) as http:

        def expect(
            method: str, path: str, allowed: tuple[int, ...], *, may_close: bool = False, **kwargs: object
        ) -> None:
            try:
                response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as exc:
                if not may_close:
                    problems.append(f"{method} {path[:60]}: no answer ({exc!r})")
                return
            if response.status_code not in allowed:
                problems.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400 and "json" not in response.headers.get("content-type", ""):
                problems.append(f"{method} {path}: {response.status_code} not JSON")

        for path, _status in BAD_IDS:
            expect("GET", path, (400, 404))
        for path in (*PATHS, "/trigger-voting"):
            get_only = path != "/trigger-voting"
            for method in (
                ("POST", "PUT", "DELETE", "PATCH") if get_only else ("GET", "PUT", "DELETE", "PATCH")
            ):
                expect(method, path, (405,))
        for path in (
            "/nope",
            "/proposals",
            "/rounds",
            "/proposals/1/votes",
            "/" + "a" * 5000,
            "/..%2f..%2fetc",
        ):
            expect("GET", path, (404, 400, 414))
        five_mb = b"{" + b'"a":' * (5 * 2**20 // 4) + b"}"
        expect(
            "POST",
            "/trigger-voting",
            (202, 413, 400),
            content=five_mb,
            headers={"content-type": "application/json"},
        )
        expect("POST", "/trigger-voting", (202, 413, 400), content=b"\x00" * 5 * 2**20)
        expect("GET", "/active-proposals", (200, 400, 413), content=b"x" * 5 * 2**20)
        expect("GET", "/votes?" + "&".join(f"node=n{i}" for i in range(500)), (400, 414, 431))
        # Over uvicorn's request-line limit the connection is closed without an answer: fine, if it lives on.
        expect(
            "GET", "/votes?" + "&".join(f"node=n{i}" for i in range(3_000)), (400, 414, 431), may_close=True
        )
        expect("GET", "/", (200, 400, 431), headers={f"x-junk-{i}": "y" * 100 for i in range(200)})
        health = http.get("/health")
        overview = http.get("/")
    assert not problems, "\n".join(problems)
    assert health.status_code in (200, 503) and overview.status_code == 200
