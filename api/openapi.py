"""The OpenAPI 3.1 document, generated from the same pydantic models that validate, and ``/docs`` to read it.

Each view says what it takes and gives with ``@operation(...)`` (request body models per content type, a query
model, success responses, the error statuses it can answer); paths, path parameters and methods come from Flask's
URL map, the scope from ``@require``, and every schema from pydantic (``models_json_schema``: validation schemas for
requests, serialization schemas for responses), so limits (``shared.limits``) appear as JSON Schema bounds.

Considered: flask-openapi3 and spectree generate documents too, but both want to own the view signatures and the
validation step (flask-openapi3 replaces ``Blueprint``); a document built from the URL map and the models we already
validate with keeps one path for both and fits the plain blueprints other areas add.

``/docs`` renders the document with Swagger UI 5 from the ``swagger-ui-bundle-v2`` package (OpenAPI 3.1 support;
no CDN: the page's scripts are served from the package by this blueprint).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, send_from_directory
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared import limits
from shared.schemas import WEBHOOK_EVENTS, Problem

P = ParamSpec("P")
R = TypeVar("R")

REF: Final = "#/components/schemas/{model}"
JSON: Final = "application/json"
PROBLEM: Final = "application/problem+json"

ERROR_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Malformed JSON, or a body that is not a JSON object.",
    401: "No API key, or a key that is unknown, revoked or expired.",
    403: "The key lacks the scope this route needs.",
    404: "Unknown, or not this client's (or not this user's when `user_id` is given).",
    409: "Conflict: the user's data is being deleted, the name exists (`if_exists=error`), or a request with this "
         "`Idempotency-Key` is still being processed.",
    413: "The body is larger than the request limit.",
    415: "Wrong content type.",
    422: "Validation failed; `errors` names each bad field.",
    429: "Over the client's queued-jobs quota or the key's request rate; see `Retry-After`.",
    503: "A dependency is down; retry after `Retry-After` seconds.",
}
WITH_RETRY_AFTER: Final = frozenset({429, 503})


@dataclass(frozen=True)
class Header:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Returns:
    description: str
    model: type[BaseModel] | None = None
    content_type: str = JSON
    headers: tuple[str, ...] = ()  # names in RESPONSE_HEADERS
    binary: Sequence[str] = ()  # content types of a binary body (images)


RESPONSE_HEADERS: Final[dict[str, dict[str, Any]]] = {
    "Location": {"description": "Where the created resource (or the image) is.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "Preference-Applied": {"description": "The `wait` preference honoured.", "schema": {"type": "string"}},
}

IDEMPOTENCY_KEY: Final = Header(
    "Idempotency-Key",
    "At most 255 printable ASCII characters, per client, kept at least 24 h: the same key with the same body answers "
    "the first request's status and job again (`Idempotent-Replayed: true`); with another body 422; while the first "
    "request is still being processed 409.",
    {"type": "string", "minLength": 1, "maxLength": 255},
)

PREFER: Final = Header(
    "Prefer",
    "`wait=N` (RFC 7240): hold the request up to N seconds (at most 60) and answer 200 with the finished job if it "
    "finishes in time, else as without it. Other preferences are ignored.",
)


@dataclass(frozen=True)
class Operation:
    summary: str
    tags: tuple[str, ...]
    responses: Mapping[int, Returns]
    errors: tuple[int, ...] = ()
    body: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    body_required: bool = True
    query: type[BaseModel] | None = None
    headers: tuple[Header, ...] = ()
    description: str | None = None


def operation(summary: str, *, tags: Sequence[str], responses: Mapping[int, Returns], errors: Sequence[int] = (),
              body: Mapping[str, type[BaseModel]] | type[BaseModel] | None = None, body_required: bool = True,
              query: type[BaseModel] | None = None, headers: Sequence[Header] = (),
              description: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Document a view (put it under ``@bp.get``/``@require``: their wrappers carry the attribute along)."""
    if body is not None and not isinstance(body, Mapping):
        body = {JSON: body}
    spec = Operation(summary, tuple(tags), dict(responses), tuple(errors), dict(body or {}), body_required, query,
                     tuple(headers), description)

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        view.__openapi__ = spec  # type: ignore[attr-defined]
        return view

    return decorate


_CONVERTER = re.compile(r"<(?:(?P<converter>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params = []
    for match in _CONVERTER.finditer(rule):
        schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^/]+$"}
        if match["converter"] == "int":  # bounded on every route (api.paths)
            schema = {"type": "integer", "minimum": 0, "maximum": limits.PATH_INTEGER_MAX}
        params.append({"name": match["name"], "in": "path", "required": True, "schema": schema})
    return _CONVERTER.sub(lambda m: "{" + m["name"] + "}", rule), params


class _Schemas:
    """Collects the models an operation names; one pydantic pass gives every schema and its definitions."""

    def __init__(self) -> None:
        self.wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        self.wanted[(model, mode)] = None
        return {"$ref": f"__model__:{mode}:{id(model)}"}

    def resolve(self) -> tuple[dict[str, Any], dict[str, Any]]:
        keys = list(self.wanted)
        by_key, definitions = models_json_schema(keys, ref_template=REF)
        refs = {f"__model__:{mode}:{id(model)}": schema for (model, mode), schema in by_key.items()}
        return refs, definitions.get("$defs", {})


def _replace_refs(node: Any, refs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in refs:
            return refs[ref]
        return {key: _replace_refs(value, refs) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_refs(item, refs) for item in node]
    return node


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value, never JSON null: drop the null branch of an optional field."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [option for option in options if option.get("type") != "null"]
        if len(rest) == 1:
            merged = {**{k: v for k, v in schema.items() if k != "anyOf"}, **rest[0]}
            return merged
    return schema


def _query_parameters(model: type[BaseModel], definitions: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    definitions.update(schema.get("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _not_null(dict(prop))
        description = prop.pop("description", None)
        prop.pop("title", None)
        limits_text = _limits_of(prop)
        if limits_text:  # generated clients show descriptions, not bounds
            description = " ".join(filter(None, [description, f"Limits: {', '.join(limits_text)}."]))
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _responses(op: Operation, schemas: _Schemas, authenticated: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, returns in op.responses.items():
        entry: dict[str, Any] = {"description": returns.description}
        if returns.model is not None:
            entry["content"] = {returns.content_type: {"schema": schemas.ref(returns.model, "serialization")}}
        elif returns.binary:
            entry["content"] = {kind: {"schema": {"type": "string", "contentMediaType": kind}}
                                for kind in returns.binary}
        if returns.headers:
            entry["headers"] = {name: {**RESPONSE_HEADERS[name], "required": name != "Preference-Applied"}
                                for name in returns.headers}
        out[str(status)] = entry
    statuses = set(op.errors) | {503}
    if authenticated:
        statuses |= {401, 403, 429}
    if op.body:
        statuses |= {413, 415, 422} | ({400} if JSON in op.body else set())
    if op.query is not None:
        statuses.add(422)
    for status in sorted(statuses):
        entry = {"description": ERROR_DESCRIPTIONS[status],
                 "content": {PROBLEM: {"schema": schemas.ref(Problem, "serialization")}}}
        if status in WITH_RETRY_AFTER:
            entry["headers"] = {"Retry-After": {**RESPONSE_HEADERS["Retry-After"], "required": True}}
        out[str(status)] = entry
    return out


def _operation(op: Operation, path_params: list[dict[str, Any]], scopes: tuple[str, ...] | None, schemas: _Schemas,
               definitions: dict[str, Any], operation_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": operation_id, "summary": op.summary, "tags": list(op.tags)}
    description = op.description or ""
    if scopes is not None:
        doc["security"] = [{"bearerAuth": []}]
        description = f"{description}\n\nScope: {' or '.join(f'`{scope}`' for scope in scopes)}.".strip()
    if description:
        doc["description"] = description
    params = list(path_params)
    if op.query is not None:
        params += _query_parameters(op.query, definitions)
    params += [{"name": h.name, "in": "header", "required": h.required, "description": h.description,
                "schema": h.schema} for h in op.headers]
    if params:
        doc["parameters"] = params
    if op.body:
        doc["requestBody"] = {"required": op.body_required, "content": {
            kind: {"schema": schemas.ref(model, "validation")} for kind, model in op.body.items()}}
    doc["responses"] = _responses(op, schemas, scopes is not None)
    return doc


WEBHOOK_HEADERS: Final = (
    ("webhook-id", "The event's id (`msg_...`): the same on every attempt and re-send; deduplicate on it."),
    ("webhook-timestamp", "Seconds since the Unix epoch when this attempt was signed; refuse old ones (replays)."),
    ("webhook-signature", "`v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\">` keyed with the "
                          "base64-decoded part of the client's `whsec_...` secret; during a rotation two "
                          "signatures, space-separated (Standard Webhooks: verify with its `standardwebhooks` "
                          "library)."),
)


def _webhooks(schemas: _Schemas) -> dict[str, Any]:
    """OpenAPI 3.1 ``webhooks``: one entry per event type, its body the event's model (Standard Webhooks)."""
    out: dict[str, Any] = {}
    for name, model in WEBHOOK_EVENTS.items():
        out[name] = {"post": {
            "operationId": f"webhook_{name.replace('.', '_')}",
            "summary": (model.__doc__ or name).strip().splitlines()[0],
            "description": "Sent to the job's, its batch's or the style version's `webhook_url`, else the client's "
                           "default (`illustrations webhooks url`). 2xx = delivered; anything else is retried on a "
                           "growing schedule (about a day in all), honouring `Retry-After`; 3xx is a failure; "
                           "410 stops retrying this event.",
            "tags": ["webhooks"],
            "parameters": [{"name": header, "in": "header", "required": True, "description": text,
                            "schema": {"type": "string"}} for header, text in WEBHOOK_HEADERS],
            "requestBody": {"required": True, "content": {JSON: {"schema": schemas.ref(model, "serialization")}}},
            "responses": {
                "200": {"description": "Delivered (any 2xx)."},
                "410": {"description": "Stop retrying this event."},
            },
        }}
    return out


def _refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF.format(model="")):
            yield ref.rsplit("/", 1)[-1]
        for value in node.values():
            yield from _refs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs_in(item)


def _reachable(roots: Iterable[str], definitions: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        todo += _refs_in(definitions[name])
    return seen


LIMIT_KEYWORDS: Final = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf", "minLength",
                         "maxLength", "pattern", "minItems", "maxItems")


def _limits_of(prop: dict[str, Any]) -> list[str]:
    """The JSON Schema bounds of a property (or of the non-null branch of an optional one), as words."""
    branches = [prop, *(option for option in prop.get("anyOf", []) if option.get("type") != "null")]
    return [f"{keyword} `{json.dumps(branch[keyword])}`" for branch in branches for keyword in LIMIT_KEYWORDS
            if keyword in branch]


def _document_request_fields(schema: dict[str, Any]) -> None:
    """A request field's default and limits, in its description too (what generated clients show).

    openapi-typescript (7.x, default options: ``defaultNonNullable``) makes every property of a component schema
    that has a ``default`` a required property, so a generated client would have to send every defaulted field: an
    optional request field keeps its default in its description instead of ``default`` (``width?: number``), which
    still says what the server uses when it is absent. Generated types carry descriptions as comments but not the
    bounds (``maximum``, ``multipleOf``, ``pattern``...), so they are said in words as well (and stay in the schema).
    """
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        if not isinstance(prop, dict):
            continue
        words = []
        limits_text = _limits_of(prop)
        if limits_text:
            words.append(f"Limits: {', '.join(limits_text)}.")
        if name not in required and "default" in prop:
            default = prop.pop("default")
            if default not in (None, [], {}):  # absent means none: nothing worth saying
                words.append(f"Default: `{json.dumps(default)}`.")
        if words:
            prop["description"] = " ".join([prop["description"], *words] if prop.get("description") else words)


def _as_sent_without_nulls(schema: dict[str, Any]) -> None:
    """A problem is sent without its null members (``api.errors.problem_response`` dumps ``exclude_none``): those
    are optional (no ``default: null``, which generated clients would take as always present), every other member
    is always there (required)."""
    properties: dict[str, Any] = schema.get("properties", {})
    absent_when_none = [name for name, prop in properties.items() if "default" in prop and prop["default"] is None]
    for name in absent_when_none:
        del properties[name]["default"]
    schema["required"] = [name for name in properties if name not in absent_when_none]


def build_document(app: Flask) -> dict[str, Any]:
    schemas = _Schemas()
    definitions: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        op: Operation | None = getattr(view, "__openapi__", None)
        if op is None:
            continue
        path, params = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                op, params, getattr(view, "__scope__", None), schemas, definitions,
                f"{rule.endpoint.replace('.', '_')}_{method.lower()}",
            )
    webhooks = _webhooks(schemas)
    refs, model_definitions = schemas.resolve()
    definitions.update(model_definitions)
    paths = _replace_refs(paths, refs)
    bodies = [operation["requestBody"] for item in paths.values() for operation in item.values()
              if "requestBody" in operation]
    for name in _reachable(_refs_in(bodies), definitions):
        _document_request_fields(definitions[name])
    _as_sent_without_nulls(definitions[Problem.__name__])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AutoBio Illustrations",
            "version": "1",
            "description": "Memoir memories to illustrations with consistent people. Errors are "
                           "application/problem+json (RFC 9457). Limits are the schemas' bounds.",
        },
        "paths": paths,
        "webhooks": _replace_refs(webhooks, refs),
        "components": {
            "schemas": definitions,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API key: `Authorization: Bearer ik_...`."}},
        },
    }


# --- Routes --------------------------------------------------------------------------------------------------------
bp = Blueprint("docs", __name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AutoBio Illustrations API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui"}});</script>
</body></html>
"""


@functools.cache
def _swagger_ui_dir() -> str:
    from swagger_ui_bundle import swagger_ui_path

    return str(swagger_ui_path)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    document = current_app.extensions.get("illustrations.openapi")
    if document is None:
        document = current_app.extensions["illustrations.openapi"] = build_document(current_app)
    return jsonify(document)


@bp.get("/docs")
def docs() -> Response:
    page = _PAGE.format(static="/docs/static", spec="/openapi.json")
    return Response(page, mimetype="text/html", headers={"Content-Security-Policy": _CSP})


# The page runs only the package's own script and one inline initialiser.
_CSP: Final = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:")
_STATIC: Final = frozenset({"swagger-ui.css", "swagger-ui-bundle.js"})


@bp.get("/docs/static/<name>")
def docs_static(name: str) -> Response:
    if name not in _STATIC:
        from api.errors import not_found

        raise not_found("file")
    return send_from_directory(_swagger_ui_dir(), name, max_age=86400)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
