"""Subjects: reference photos of a person, uploaded once, used by id or name in later requests.

``POST /v1/subjects`` (multipart: user_id, name, image, optional if_exists) and ``GET /v1/subjects/{id}``.
A new upload under an existing name adds a version when the image differs (``if_exists=replace``, the default) or
answers 409 (``if_exists=error``).
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Flask, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import current_principal, require
from api.errors import ApiError, fields_of, not_found, validation_error
from api.services import services
from api.views import subject_out
from shared.images import ImageRejected, NormalisedImage, normalise
from shared.models import Subject, SubjectVersion
from shared.schemas import Name, UserId

bp = Blueprint("subjects", __name__, url_prefix="/v1/subjects")


class SubjectForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    name: Name
    if_exists: Literal["replace", "error"] = "replace"


def latest_version(session: Session, subject_id: str) -> SubjectVersion | None:
    return session.execute(
        select(SubjectVersion)
        .where(SubjectVersion.subject_id == subject_id)
        .order_by(SubjectVersion.version.desc())
        .limit(1)
    ).scalar_one_or_none()


@bp.post("")
@require("generate")
def create_subject() -> tuple[Response, int, dict[str, str]]:
    if request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, "Unsupported Media Type", "upload the image as multipart/form-data")
    try:
        form = SubjectForm.model_validate(request.form.to_dict())
    except ValidationError as exc:
        raise validation_error(fields_of(exc)) from None
    upload = request.files.get("image")
    if upload is None:
        raise validation_error([("image", "Field required")])
    try:
        image = normalise(upload.read())
    except ImageRejected as exc:
        raise validation_error([("image", str(exc))]) from None

    try:
        return _store_subject(form, image)
    except IntegrityError:  # two uploads for the same new name at once: the other one won
        raise ApiError(409, "Conflict", "another upload for this subject is in progress; retry") from None


def _store_subject(form: SubjectForm, image: NormalisedImage) -> tuple[Response, int, dict[str, str]]:
    principal = current_principal()
    svc = services()
    with svc.db.begin() as session:
        subject = session.execute(
            select(Subject).where(
                Subject.client_id == principal.client_id, Subject.user_id == form.user_id, Subject.name == form.name
            )
        ).scalar_one_or_none()
        status = 201
        if subject is None:
            subject = Subject(client_id=principal.client_id, user_id=form.user_id, name=form.name)
            session.add(subject)
            session.flush()
            current = None
        else:
            current = latest_version(session, subject.id)
            if form.if_exists == "error":
                raise ApiError(409, "Conflict", "a subject with this name exists for this user")
        if current is not None and current.sha256 == image.sha256:
            version = current
            status = 200
        else:
            number = (session.execute(
                select(func.coalesce(func.max(SubjectVersion.version), 0)).where(
                    SubjectVersion.subject_id == subject.id
                )
            ).scalar_one()) + 1
            key = f"subjects/{subject.id}/v{number}.png"
            svc.storage.put(key, image.png, "image/png")
            version = SubjectVersion(
                subject_id=subject.id,
                version=number,
                storage_key=key,
                sha256=image.sha256,
                width=image.width,
                height=image.height,
            )
            session.add(version)
            session.flush()
            session.refresh(version)
        body = subject_out(subject, version)
    return jsonify(body.model_dump(mode="json")), status, {"Location": f"/v1/subjects/{subject.id}"}


@bp.get("/<subject_id>")
@require("generate")
def get_subject(subject_id: str) -> Response:
    principal = current_principal()
    user_id = request.args.get("user_id")
    with services().db.begin() as session:
        subject = session.execute(
            select(Subject).where(Subject.id == subject_id, Subject.client_id == principal.client_id)
        ).scalar_one_or_none()
        if subject is None or (user_id is not None and subject.user_id != user_id):
            raise not_found("subject")
        version = latest_version(session, subject.id)
        if version is None:
            raise not_found("subject")
        return jsonify(subject_out(subject, version).model_dump(mode="json"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
