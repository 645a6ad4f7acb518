"""Every stable code of the project, and its one exception hierarchy.

The codes clients branch on (never on message text) live here and only here; the OpenAPI document publishes each
enum as the schema of its field:

- ``ErrorCode`` and ``CancelReason``: a job's ``error.code`` (failed, canceled).
- ``ProblemCode``: a problem+json answer's ``code`` (what went wrong with the request as a whole).
- ``FieldCode``: the ``code`` of each field error in a problem's ``errors`` (what is wrong with that field);
  ``field_code`` maps pydantic's error types onto it.

Messages never contain prompt or memoir text: they describe what went wrong, not what the user wrote.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a job failed (``error.code`` of a ``failed`` job)."""

    REFERENCE_UNREACHABLE = "reference_unreachable"
    REFERENCE_BLOCKED = "reference_blocked"
    REFERENCE_INVALID = "reference_invalid"
    STYLE_NOT_FOUND = "style_not_found"
    OUT_OF_MEMORY = "out_of_memory"
    TIME_LIMIT = "time_limit"
    WORKER_LOST = "worker_lost"
    SETUP_FAILED = "setup_failed"
    INTERNAL = "internal"


class CancelReason(StrEnum):
    """Why a job was canceled (``error.code`` of a ``canceled`` job)."""

    CANCELED_BY_CLIENT = "canceled_by_client"
    DEADLINE = "deadline"
    USER_DELETED = "user_deleted"


class ProblemCode(StrEnum):
    """``code`` of a problem+json answer: one per distinct situation a client may handle differently."""

    MALFORMED_REQUEST = "malformed_request"  # 400: the body is not JSON, or not a JSON object
    UNAUTHORIZED = "unauthorized"  # 401: no key, or not a valid one
    FORBIDDEN = "forbidden"  # 403: the key lacks the route's scope
    NOT_FOUND = "not_found"  # 404: no such resource, or not this client's
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    CONFLICT = "conflict"  # 409: the resource's state does not allow it now (e.g. rating an unfinished job)
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"  # 409: the first request with this key is still processed
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"  # 422: the key was used with another request
    USER_BEING_DELETED = "user_being_deleted"  # 409: the user's data is being deleted
    SUBJECT_EXISTS = "subject_exists"  # 409: if_exists=error and the subject exists
    BODY_TOO_LARGE = "body_too_large"  # 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    VALIDATION_FAILED = "validation_failed"  # 422: see each field's code in ``errors``
    RATE_LIMITED = "rate_limited"  # 429: over the request rate (Retry-After)
    QUOTA_EXCEEDED = "quota_exceeded"  # 429: over the client's queued-jobs quota (Retry-After)
    SERVICE_UNAVAILABLE = "service_unavailable"  # 503: a dependency is down (Retry-After)
    GENERATION_FAILED = "generation_failed"  # AutoBio's route: the job failed (422 its input, 503 the service)
    GENERATION_CANCELED = "generation_canceled"  # AutoBio's route: the job was canceled (409)
    INTERNAL = "internal"  # 500: a defect of ours, never a client's mistake


class FieldCode(StrEnum):
    """``code`` of one field error: a small closed set (pydantic's error types are mapped onto it)."""

    MISSING = "missing"  # required and absent
    EXTRA_FORBIDDEN = "extra_forbidden"  # an unknown field or parameter
    INVALID_TYPE = "invalid_type"  # a string where a number goes, an object where a list goes, ...
    INVALID_FORMAT = "invalid_format"  # not a date, a time, a URL, ...
    INVALID_CHOICE = "invalid_choice"  # not one of the allowed values (an enum)
    TOO_SHORT = "too_short"  # a string or list under its minimum length
    TOO_LONG = "too_long"  # a string, list or document over its maximum length or size
    OUT_OF_RANGE = "out_of_range"  # a number (or a count) outside its bounds
    MULTIPLE_OF = "multiple_of"  # a number that must be a multiple (width, height: of 8)
    PATTERN_MISMATCH = "pattern_mismatch"  # a string outside its allowed characters
    NUL_CHARACTER = "nul_character"  # a NUL character (never storable)
    INVALID_URL = "invalid_url"  # not an http(s) URL this service fetches (scheme, credentials, host)
    BLOCKED_URL = "blocked_url"  # names or resolves to an address that is not public (see fetch_allowlist)
    NOT_FOUND = "not_found"  # names a subject, style or illustration that does not exist for this client/user
    INVALID_IMAGE = "invalid_image"  # an upload that is not a usable image (format, size, pixels)
    REFERENCE_UNREACHABLE = "reference_unreachable"  # a URL fetched at submit (or by the job) could not be read
    REFERENCE_BLOCKED = "reference_blocked"  # ... resolved or redirected to a blocked address
    REFERENCE_INVALID = "reference_invalid"  # ... is not a usable image
    STYLE_NOT_FOUND = "style_not_found"  # the job's style was removed before it ran (AutoBio's route)
    INVALID_VALUE = "invalid_value"  # any other rule of the field (the message says which)


# pydantic error types (``ValidationError.errors()[i]["type"]``) → FieldCode; unlisted types are ``invalid_value``.
_PYDANTIC: dict[str, FieldCode] = {
    "missing": FieldCode.MISSING,
    "missing_argument": FieldCode.MISSING,
    "missing_keyword_only_argument": FieldCode.MISSING,
    "missing_positional_only_argument": FieldCode.MISSING,
    "extra_forbidden": FieldCode.EXTRA_FORBIDDEN,
    "unexpected_keyword_argument": FieldCode.EXTRA_FORBIDDEN,
    "unexpected_positional_argument": FieldCode.EXTRA_FORBIDDEN,
    "string_too_short": FieldCode.TOO_SHORT,
    "too_short": FieldCode.TOO_SHORT,
    "bytes_too_short": FieldCode.TOO_SHORT,
    "string_too_long": FieldCode.TOO_LONG,
    "too_long": FieldCode.TOO_LONG,
    "bytes_too_long": FieldCode.TOO_LONG,
    "greater_than": FieldCode.OUT_OF_RANGE,
    "greater_than_equal": FieldCode.OUT_OF_RANGE,
    "less_than": FieldCode.OUT_OF_RANGE,
    "less_than_equal": FieldCode.OUT_OF_RANGE,
    "finite_number": FieldCode.OUT_OF_RANGE,
    "int_from_float": FieldCode.INVALID_TYPE,
    "multiple_of": FieldCode.MULTIPLE_OF,
    "string_pattern_mismatch": FieldCode.PATTERN_MISMATCH,
    "literal_error": FieldCode.INVALID_CHOICE,
    "enum": FieldCode.INVALID_CHOICE,
    "union_tag_invalid": FieldCode.INVALID_CHOICE,
    "union_tag_not_found": FieldCode.MISSING,
    "model_type": FieldCode.INVALID_TYPE,
    "model_attributes_type": FieldCode.INVALID_TYPE,
    "dataclass_type": FieldCode.INVALID_TYPE,
    "is_instance_of": FieldCode.INVALID_TYPE,
    "none_required": FieldCode.INVALID_TYPE,
    "url_too_long": FieldCode.TOO_LONG,
}
_FORMATS = ("date", "datetime", "time", "timedelta", "url", "uuid", "json", "decimal")


def field_code(pydantic_type: str) -> FieldCode:
    """The stable code of one pydantic error type (``string_too_long`` → ``too_long``, ``int_parsing`` →
    ``invalid_type``, ``date_from_datetime_parsing`` → ``invalid_format``, ...)."""
    known = _PYDANTIC.get(pydantic_type)
    if known is not None:
        return known
    if pydantic_type.startswith(_FORMATS):  # date_parsing, datetime_from_date_parsing, url_scheme, ...
        return FieldCode.INVALID_TYPE if pydantic_type.endswith("_type") else FieldCode.INVALID_FORMAT
    if pydantic_type.endswith(("_type", "_parsing")):  # int_parsing, string_type, list_type, bool_parsing, ...
        return FieldCode.INVALID_TYPE
    return FieldCode.INVALID_VALUE


class IllustrationsError(Exception):
    """Base of every error this project raises on purpose."""


class JobFailure(IllustrationsError):
    """A job cannot succeed: carries a code of the closed list and a message safe to show the client."""

    def __init__(self, code: ErrorCode, message: str, *, transient: bool = False) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
