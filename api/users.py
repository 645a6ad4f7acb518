"""User deletion: ``DELETE /v1/users/{user_id}`` (``admin``) → 202 and a status resource.

The deletion runs on a maintenance worker (``shared.deletion.run``): the user's jobs are canceled, then every part
of the deletion registry removes what it keeps of them. Meanwhile submissions for that user get 409. Asking again
while one runs answers the same deletion.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select

from api.auth import current_principal, require
from api.errors import not_found, validation_error
from api.openapi import Returns, operation
from api.services import services
from api.views import absolute
from shared import deletion
from shared.deletion.run import publish_deletion
from shared.errors import FieldCode
from shared.models import UserDeletion
from shared.schemas import DeletionOut, UserId

bp = Blueprint("users", __name__, url_prefix="/v1/users")

_USER_ID: TypeAdapter[str] = TypeAdapter(UserId)


def deletion_path(row: UserDeletion) -> str:
    return f"/v1/users/{row.user_id}/deletions/{row.id}"


def deletion_out(row: UserDeletion) -> DeletionOut:
    return DeletionOut(id=row.id, user_id=row.user_id, status=row.status,
                       parts=dict(row.parts or {}), created_at=row.created_at, finished_at=row.finished_at,
                       links={"self": absolute(deletion_path(row))})


def _user_id(value: str) -> str:
    try:
        return _USER_ID.validate_python(value)
    except ValidationError:
        raise validation_error([("user_id", "not a valid user id", FieldCode.PATTERN_MISMATCH)]) from None


@bp.delete("/<user_id>")
@require("admin")
@operation(
    "Delete everything of a user", tags=["users"],
    description="Cancels the user's jobs, then removes their jobs, images (objects no other job references), "
                "subjects and photos, and what every other area keeps of them. Submissions for the user answer 409 "
                "until it has finished.",
    responses={202: Returns("Accepted (or already running): the deletion's status.", DeletionOut,
                            headers=("Location",))},
    errors=(422,),
)
def delete_user(user_id: str) -> tuple[Response, int, dict[str, str]]:
    user_id = _user_id(user_id)
    svc = services()
    with svc.db.begin() as session:
        row, created = deletion.request(session, current_principal().client_id, user_id)
        out = deletion_out(row)
    if created:
        publish_deletion(svc.db, svc.publisher, out.id)  # a failed publish is sent by the relay
    return jsonify(out.model_dump(mode="json")), 202, {"Location": f"/v1/users/{out.user_id}/deletions/{out.id}"}


@bp.get("/<user_id>/deletions/<deletion_id>")
@require("admin")
@operation("Read a user deletion's status", tags=["users"], responses={200: Returns("The deletion.", DeletionOut)},
           errors=(404,))
def get_deletion(user_id: str, deletion_id: str) -> Response:
    with services().db.begin() as session:
        row = session.execute(
            select(UserDeletion).where(UserDeletion.id == deletion_id, UserDeletion.user_id == user_id,
                                       UserDeletion.client_id == current_principal().client_id)
        ).scalar_one_or_none()
        if row is None:
            raise not_found("deletion")
        out = deletion_out(row)
    return jsonify(out.model_dump(mode="json"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
