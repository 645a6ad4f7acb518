"""Reading requests: 415 for a wrong content type, 400 for malformed JSON, 422 naming each bad field or parameter.

NUL characters are refused everywhere (body, query, form, path): PostgreSQL cannot store them in text or JSONB, so
letting one through would turn a client's input into a 500.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Flask, request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, fields_of, validation_error
from shared.errors import FieldCode
from shared.schemas import Query

M = TypeVar("M", bound=BaseModel)
Q = TypeVar("Q", bound=Query)


def json_body(model: type[M]) -> M:
    if request.mimetype != "application/json":
        raise ApiError(415, "Unsupported Media Type", "send the request body as application/json")
    data = request.get_data(cache=False)
    try:
        parsed = model.model_validate_json(data)
    except ValidationError as exc:
        if any(item["type"] == "json_invalid" for item in exc.errors()):
            raise ApiError(400, "Bad Request", "the body is not valid JSON") from None
        if any(item["type"] == "model_type" and not item["loc"] for item in exc.errors()):
            raise ApiError(400, "Bad Request", "the body must be a JSON object") from None
        raise validation_error(fields_of(exc)) from None
    if b"\\u0000" in data:
        bad = _nul_paths(json.loads(data))
        if bad:
            raise validation_error([(path or "body", NUL_MESSAGE, FieldCode.NUL_CHARACTER) for path in bad])
    return parsed


NUL_MESSAGE = "NUL characters are not accepted"


def _nul_paths(value: Any, path: str = "") -> list[str]:
    if isinstance(value, str):
        return [path] if "\x00" in value else []
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            found += [child] if "\x00" in key else _nul_paths(item, child)
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _nul_paths(item, f"{path}.{i}" if path else str(i))]
    return []


def _refuse_nul() -> None:
    """Before every view: a NUL in the path is no such resource; in the query or a form field, a 422."""
    if any("\x00" in str(value) for value in (request.view_args or {}).values()):
        raise ApiError(404, "Not Found", "no such resource")
    sources = [request.args, *([request.form] if request.mimetype in FORMS else [])]
    bad = [name for source in sources for name, value in source.items(multi=True)
           if "\x00" in name or "\x00" in value]
    if bad:
        raise validation_error([(name.replace("\x00", "?"), NUL_MESSAGE, FieldCode.NUL_CHARACTER) for name in bad])


FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def init_app(app: Flask) -> None:
    app.before_request(_refuse_nul)


def query_args(model: type[Q]) -> Q:
    """The query string as ``model`` (unknown parameters and bad values are a 422 naming them)."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_error(fields_of(exc)) from None
