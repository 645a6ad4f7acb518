"""The OpenAPI 3.1 document (generated from the models that validate), /docs from a package, and a schemathesis
run against the document on the app with a real PostgreSQL, Redis and store: no 5xx, no answer outside the schema."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import hypothesis
import pytest
import schemathesis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from cli import main
from shared import limits
from shared.db import Database
from shared.errors import CancelReason, ErrorCode, FieldCode, ProblemCode
from shared.schemas import WEBHOOK_EVENTS, WebhookDeliveryOut
from shared.settings import Settings
from shared.webhooks import events
from tests.helpers import make_key

CONTRACT = {
    ("post", "/v1/illustrations"), ("get", "/v1/illustrations"), ("get", "/v1/illustrations/{job_id}"),
    ("post", "/v1/illustrations/{job_id}/cancel"), ("get", "/v1/illustrations/{job_id}/images/{index}"),
    ("post", "/v1/subjects"), ("get", "/v1/subjects"), ("get", "/v1/subjects/{subject_id}"),
    ("delete", "/v1/subjects/{subject_id}"), ("post", "/v1/batches"), ("get", "/v1/batches/{batch_id}"),
    ("delete", "/v1/users/{user_id}"), ("get", "/v1/users/{user_id}/deletions/{deletion_id}"),
    ("post", "/api/illustrations/generate"), ("get", "/api/illustrations/{generation_id}"),
    ("post", "/v1/styles"), ("get", "/v1/styles"), ("get", "/v1/styles/{name}"),
    ("post", "/v1/styles/{name}/versions/{version}/cancel"),
    ("post", "/v1/illustrations/{job_id}/feedback"), ("get", "/v1/metrics/quality"), ("get", "/metrics"),
    ("get", "/ops"), ("get", "/v1/webhooks/deliveries"), ("post", "/v1/webhooks/deliveries/{event_id}/retry"),
}


def test_the_document_covers_every_route_with_its_limits(client: FlaskClient, app: Flask) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: Any = response.json
    assert doc["openapi"] == "3.1.0"
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert documented >= CONTRACT
    # Every /v1 and /api route of the app is documented (a new route without @operation fails here).
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/v1", "/api")):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                assert (method.lower(), path) in documented, (method, path)
    schemas = doc["components"]["schemas"]
    params = schemas["Params"]["properties"]
    assert params["width"]["maximum"] == limits.WIDTH_MAX
    assert params["width"]["multipleOf"] == limits.SIZE_MULTIPLE
    assert params["steps"]["minimum"] == limits.STEPS_MIN
    assert params["num_images"]["maximum"] == limits.NUM_IMAGES_MAX
    assert params["seed"]["anyOf"][0]["maximum"] == limits.SEED_MAX
    request = schemas["IllustrationRequest"]
    assert request["required"] == ["user_id", "prompt"]
    assert request["additionalProperties"] is False
    assert request["properties"]["prompt"]["maxLength"] == limits.PROMPT_MAX_CHARS
    assert schemas["BatchRequest"]["properties"]["requests"]["maxItems"] == limits.BATCH_MAX
    create = doc["paths"]["/v1/illustrations"]["post"]
    assert create["security"] == [{"bearerAuth": []}]
    assert "Scope: `generate`" in create["description"]
    assert {"202", "200", "400", "401", "403", "409", "413", "415", "422", "429", "503"} <= set(create["responses"])
    assert create["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert "Scope: `admin`" in doc["paths"]["/v1/users/{user_id}"]["delete"]["description"]
    compat = doc["paths"]["/api/illustrations/generate"]["post"]
    result = compat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schemas[result]["properties"]) >= {"imageUrl", "generationId", "metadata"}
    assert set(doc["paths"]["/v1/subjects"]["post"]["requestBody"]["content"]) == {"multipart/form-data",
                                                                                   "application/json"}
    training = doc["paths"]["/v1/styles"]["post"]
    assert "Scope: `styles`" in training["description"]
    assert set(training["requestBody"]["content"]) == {
        "multipart/form-data", "application/json"}
    assert schemas["StyleTrainingRequest"]["properties"]["images"]["minItems"] == limits.TRAINING_IMAGES_MIN
    assert schemas["TrainingParams"]["properties"]["rank"]["maximum"] == limits.TRAINING_RANK_MAX


def test_request_fields_with_defaults_stay_optional_and_say_their_default_and_limits(client: FlaskClient) -> None:
    """openapi-typescript (default options) makes a component property with a ``default`` required: request
    schemas carry their defaults and bounds in words instead (the bounds stay as keywords too)."""
    doc: Any = client.get("/openapi.json").json
    schemas = doc["components"]["schemas"]
    request_side = ["IllustrationRequest", "Params", "SubjectRef", "Style", "BatchRequest", "GenerateRequest",
                    "SubjectUrlRequest", "StyleTrainingRequest", "TrainingParams", "FeedbackRequest"]
    for name in request_side:
        for field, prop in schemas[name]["properties"].items():
            assert "default" not in prop, (name, field)
    params = schemas["Params"]["properties"]
    assert f"Default: `{limits.DEFAULT_WIDTH}`." in params["width"]["description"]
    assert f"maximum `{limits.WIDTH_MAX}`" in params["width"]["description"]
    assert f"multipleOf `{limits.SIZE_MULTIPLE}`" in params["width"]["description"]
    assert params["width"]["multipleOf"] == limits.SIZE_MULTIPLE
    assert 'Default: `"interactive"`.' in schemas["IllustrationRequest"]["properties"]["priority"]["description"]
    assert "pattern" in schemas["IllustrationRequest"]["properties"]["user_id"]["description"]
    listing = {p["name"]: p for p in doc["paths"]["/v1/illustrations"]["get"]["parameters"]}
    assert f"maximum `{limits.LIST_LIMIT_MAX}`" in listing["limit"]["description"]
    assert listing["limit"]["schema"]["maximum"] == limits.LIST_LIMIT_MAX
    # Every member of an answer is always sent: required (a generated client need not check for it).
    assert set(schemas["JobOut"]["required"]) == set(schemas["JobOut"]["properties"])
    assert "layout" in schemas["JobOut"]["required"]


def test_error_codes_are_enums_from_one_place(client: FlaskClient) -> None:
    doc: Any = client.get("/openapi.json").json
    schemas = doc["components"]["schemas"]

    def enum_of(schema: dict[str, Any]) -> list[str]:
        ref = schema.get("$ref")
        resolved = schemas[ref.rsplit("/", 1)[-1]] if ref else schema
        return list(resolved["enum"])

    assert enum_of(schemas["Problem"]["properties"]["code"]) == [code.value for code in ProblemCode]
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "code", "errors"}  # as sent
    assert "default" not in schemas["Problem"]["properties"]["detail"]  # absent when null (exclude_none)
    assert enum_of(schemas["ProblemField"]["properties"]["code"]) == [code.value for code in FieldCode]
    assert enum_of(schemas["JobErrorOut"]["properties"]["code"]) == [
        code.value for code in (*ErrorCode, *CancelReason)]
    create = doc["paths"]["/v1/illustrations"]["post"]
    assert create["responses"]["422"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"}


def test_the_webhooks_section_has_every_event(client: FlaskClient) -> None:
    doc: Any = client.get("/openapi.json").json
    schemas = doc["components"]["schemas"]
    sent = {f"illustration.{state}" for state in events.JOB_STATES} | {f"style.{s}" for s in events.STYLE_STATES}
    assert set(doc["webhooks"]) == sent == set(WEBHOOK_EVENTS)
    assert set(get_args(WebhookDeliveryOut.model_fields["type"].annotation)) == sent
    for name, item in doc["webhooks"].items():
        post = item["post"]
        assert {p["name"] for p in post["parameters"] if p["in"] == "header"} == {
            "webhook-id", "webhook-timestamp", "webhook-signature"}
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = schemas[ref.rsplit("/", 1)[-1]]
        assert body["properties"]["type"]["const"] == name
        assert set(body["required"]) >= {"type", "timestamp", "data"}
        data = body["properties"]["data"]["$ref"].rsplit("/", 1)[-1]
        assert data == ("JobOut" if name.startswith("illustration.") else "StyleVersionEventData")
        assert "410" in post["responses"]


def test_the_cli_writes_the_document_the_api_serves(client: FlaskClient, tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    result = CliRunner().invoke(main, ["openapi", "--output", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == client.get("/openapi.json").json


def test_docs_render_the_document_from_the_package(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    assert "/docs/static/swagger-ui-bundle.js" in html
    assert "http://" not in html
    assert "https://" not in html  # nothing from a CDN
    for name, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        with client.get(f"/docs/static/{name}") as asset:
            assert asset.status_code == 200
            assert kind in asset.mimetype
            assert len(asset.data) > 10_000
    assert client.get("/docs/static/../../etc/passwd").status_code == 404
    assert client.get("/docs/static/index.html").status_code == 404


# --- Fuzzing ----------------------------------------------------------------------------------------------------
@pytest.fixture
def fuzz_app(settings: Settings) -> Iterator[Flask]:
    from api import create_app

    # Prefer: wait capped at 0.2 s, no rate limit (hypothesis sends many requests), fetches fail fast.
    app = create_app(settings.model_copy(update={"prefer_wait_max_s": 0.2, "compat_wait_s": 0.2, "rate_limit": "",
                                                 "fetch_timeout_s": 1.0, "fetch_connect_timeout_s": 0.5}))
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


@pytest.fixture
def fuzz_auth(fuzz_app: Flask) -> dict[str, str]:
    db: Database = fuzz_app.extensions["illustrations"].db
    return {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'admin', 'styles', 'ops'))}"}


EXAMPLES_PER_OPERATION = {schemathesis.GenerationMode.POSITIVE: 40, schemathesis.GenerationMode.NEGATIVE: 20}
# Schema-valid is not always acceptable: a well-formed request naming a subject the user does not have is a 422 by
# the contract, which no schema can say. Every other check runs (no 5xx, status codes, content types, headers and
# bodies within the schema, schema-invalid data refused).
SEMANTIC = [schemathesis.checks.positive_data_acceptance]


def test_every_operation_answers_within_its_schema(fuzz_app: Flask, fuzz_auth: dict[str, str]) -> None:
    """Each operation of the document, fuzzed with a fixed seed and a bounded number of examples.

    schemathesis's pytest loader does not run under pytest 9 yet: its Python API gives a hypothesis strategy per
    operation instead, run here with the same checks (``call_and_validate``).
    """
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= len(CONTRACT)
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION[mode], derandomize=True, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck), phases=[
                                 hypothesis.Phase.explicit, hypothesis.Phase.generate])
        def check(case: Any) -> None:
            case.call_and_validate(headers={**(case.headers or {}), **fuzz_auth}, excluded_checks=SEMANTIC)

        check()
