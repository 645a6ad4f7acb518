"""The stable, machine-readable codes of problem+json answers: the one list the API answers with and the OpenAPI
document publishes as enums (clients branch on these, never on message text).

- ``ProblemCode``: the problem as a whole (``code`` of a problem+json body); ``DEFAULT_BY_STATUS`` names the code an
  answer of a status carries when the raiser names none.
- ``FIELD_CODES``: what is wrong with one field (``errors[].code``): every error type pydantic can report (``missing``,
  ``multiple_of``, ``extra_forbidden``, ``string_too_long``, ...; they are stable names in pydantic-core) plus the
  project's own checks (``PROJECT_FIELD_CODES``).

A job's ``error.code`` is another closed list: ``shared.errors.ErrorCode`` and ``CancelReason``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, get_args

from pydantic_core.core_schema import ErrorType


class ProblemCode(StrEnum):
    MALFORMED_REQUEST = "malformed_request"  # 400: not JSON, not an object
    UNAUTHORIZED = "unauthorized"  # 401
    FORBIDDEN = "forbidden"  # 403: the key lacks the scope
    NOT_FOUND = "not_found"  # 404: unknown, or not this client's or user's
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    CONFLICT = "conflict"  # 409: name exists, subject upload in progress, job not in a state for this
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"  # 409: the first request with this key is still processed
    USER_BEING_DELETED = "user_being_deleted"  # 409
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    VALIDATION_FAILED = "validation_failed"  # 422: ``errors`` names each field
    RATE_LIMITED = "rate_limited"  # 429: the key's request rate
    QUOTA_EXCEEDED = "quota_exceeded"  # 429: the client's queued-jobs quota
    SERVICE_UNAVAILABLE = "service_unavailable"  # 503: a dependency is down
    INTERNAL = "internal"  # 500: a bug of ours (never for what a client sent)
    HTTP_ERROR = "http_error"  # any other status werkzeug answers


DEFAULT_BY_STATUS: Final[dict[int, ProblemCode]] = {
    400: ProblemCode.MALFORMED_REQUEST,
    401: ProblemCode.UNAUTHORIZED,
    403: ProblemCode.FORBIDDEN,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.CONFLICT,
    413: ProblemCode.PAYLOAD_TOO_LARGE,
    415: ProblemCode.UNSUPPORTED_MEDIA_TYPE,
    422: ProblemCode.VALIDATION_FAILED,
    429: ProblemCode.RATE_LIMITED,
    500: ProblemCode.INTERNAL,
    503: ProblemCode.SERVICE_UNAVAILABLE,
}


def for_status(status: int) -> ProblemCode:
    return DEFAULT_BY_STATUS.get(status, ProblemCode.HTTP_ERROR)


# The project's own field checks (beyond pydantic's types).
PROJECT_FIELD_CODES: Final = (
    "invalid",  # a check without a more precise code
    "unknown_subject",  # a subject by an id or name the user does not have
    "unknown_style",  # params.style_lora names no ready style
    "blocked_address",  # a URL of a private or otherwise blocked address
    "unreachable",  # a URL that could not be fetched
    "invalid_image",  # not a PNG, JPEG or WebP within the limits
    "nul_character",  # a NUL character in a field or its name
    "invalid_cursor",  # not a cursor this API gave out
    "idempotency_key_reused",  # the Idempotency-Key was used with another body
    "reference_unreachable",  # a job's input failed in its preparation (the legacy route's 422)
    "reference_blocked",
    "reference_invalid",
    "style_not_found",
)

FIELD_CODES: Final[tuple[str, ...]] = tuple(dict.fromkeys((*get_args(ErrorType), *PROJECT_FIELD_CODES)))
