"""problem+json (RFC 9457) for every error the API answers, and never a 500 for what a client sent.

Every problem carries a stable ``code`` (``shared.errors.ProblemCode``; by default the one of its status) and its
request id as ``instance``; every field error a stable ``code`` (``shared.errors.FieldCode``; pydantic's error types
are mapped by ``shared.errors.field_code``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, json
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from shared.errors import FieldCode, ProblemCode, field_code
from shared.schemas import Problem, ProblemField

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# A field error as the routes build it: (field, message, code); without a code, ``invalid_value``.
FieldError = tuple[str, str, FieldCode] | tuple[str, str]

# The problem code of a status when the raiser names none.
BY_STATUS: dict[int, ProblemCode] = {
    400: ProblemCode.MALFORMED_REQUEST,
    401: ProblemCode.UNAUTHORIZED,
    403: ProblemCode.FORBIDDEN,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.CONFLICT,
    413: ProblemCode.BODY_TOO_LARGE,
    415: ProblemCode.UNSUPPORTED_MEDIA_TYPE,
    422: ProblemCode.VALIDATION_FAILED,
    429: ProblemCode.RATE_LIMITED,
    503: ProblemCode.SERVICE_UNAVAILABLE,
}


def code_of_status(status: int) -> ProblemCode:
    if status in BY_STATUS:
        return BY_STATUS[status]
    return ProblemCode.MALFORMED_REQUEST if 400 <= status < 500 else ProblemCode.INTERNAL


def problem_field(error: FieldError | ProblemField) -> ProblemField:
    if isinstance(error, ProblemField):
        return error
    field, message, *code = error
    return ProblemField(field=field, message=message, code=code[0] if code else FieldCode.INVALID_VALUE)


class ApiError(Exception):
    """An error answer: status, a short title, a detail, the fields at fault, and its code (by default the one of
    its status)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: Iterable[FieldError | ProblemField] = (),
        headers: dict[str, str] | None = None,
        code: ProblemCode | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = [problem_field(error) for error in errors]
        self.headers = headers or {}
        self.code = code or code_of_status(status)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "Not Found", f"no such {what}")


def validation_error(errors: Iterable[FieldError | ProblemField],
                     detail: str = "the request is not valid") -> ApiError:
    return ApiError(422, "Unprocessable Content", detail, errors)


def fields_of(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Field paths, messages and codes of a pydantic error, without the input values (they may be personal)."""
    out: list[FieldError] = []
    for item in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        out.append((prefix + loc if loc else prefix.rstrip(".") or "body", item["msg"], field_code(item["type"])))
    return out


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    if problem.instance is None and has_request_context() and g.get("request_id"):
        problem = problem.model_copy(update={"instance": g.request_id})
    body = problem.model_dump(mode="json", exclude_none=True)
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _from_api_error(exc: ApiError) -> Response:
    problem = Problem(title=exc.title, status=exc.status, detail=exc.detail, code=exc.code, errors=exc.errors)
    return problem_response(problem, exc.headers)


def _from_http_exception(exc: HTTPException) -> Response:
    if isinstance(exc.response, Response):  # already a complete answer (the rate limiter's problem+json)
        return exc.response
    status = exc.code or 500
    headers: dict[str, Any] = {}
    if status == 405 and exc.get_response().headers.get("Allow"):
        headers["Allow"] = exc.get_response().headers["Allow"]
    problem = Problem(title=exc.name, status=status, detail=exc.description, code=code_of_status(status))
    return problem_response(problem, headers)


def _from_database_down(exc: Exception) -> Response:
    log.warning("database unavailable: %s", type(exc).__name__)
    problem = Problem(title="Service Unavailable", status=503, detail="the database is unavailable; retry later",
                      code=ProblemCode.SERVICE_UNAVAILABLE)
    retry_after = current_app.extensions["illustrations"].settings.retry_after_s
    return problem_response(problem, {"Retry-After": str(retry_after)})


def _from_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    problem = Problem(title="Internal Server Error", status=500, detail="an unexpected error occurred",
                      code=ProblemCode.INTERNAL)
    return problem_response(problem)


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _from_api_error)
    app.register_error_handler(HTTPException, _from_http_exception)
    app.register_error_handler(OperationalError, _from_database_down)
    app.register_error_handler(DBAPIError, _from_database_down_if_disconnect)
    app.register_error_handler(Exception, _from_unexpected)


def _from_database_down_if_disconnect(exc: DBAPIError) -> Response:
    if exc.connection_invalidated:
        return _from_database_down(exc)
    return _from_unexpected(exc)
