"""Reading requests: 415 for a wrong content type, 400 for malformed JSON, 422 naming each bad field or parameter."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, fields_of, validation_error
from shared.schemas import Query

M = TypeVar("M", bound=BaseModel)
Q = TypeVar("Q", bound=Query)


def json_body(model: type[M]) -> M:
    if request.mimetype != "application/json":
        raise ApiError(415, "Unsupported Media Type", "send the request body as application/json")
    data = request.get_data(cache=False)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        if any(item["type"] == "json_invalid" for item in exc.errors()):
            raise ApiError(400, "Bad Request", "the body is not valid JSON") from None
        if any(item["type"] == "model_type" and not item["loc"] for item in exc.errors()):
            raise ApiError(400, "Bad Request", "the body must be a JSON object") from None
        raise validation_error(fields_of(exc)) from None


def query_args(model: type[Q]) -> Q:
    """The query string as ``model`` (unknown parameters and bad values are a 422 naming them)."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_error(fields_of(exc)) from None
