"""Subjects: reference photos of a person, uploaded (multipart) or fetched from a URL (JSON), used by id or name.

A new photo under an existing name adds a version when it differs (``if_exists=replace``, the default; the same
photo answers 200 with the current version) or answers 409 (``if_exists=error``). URLs go through the safe fetcher
(``shared.fetch``) before the image checks; a URL that cannot be used is a 422 naming ``image_url``. The face
detector (``shared.faces``) runs on each new photo before it is stored: the answer's ``face`` and ``warnings``.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Flask, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import current_principal, require
from api.body import json_body, query_args
from api.errors import ApiError, fields_of, not_found, validation_error
from api.openapi import Returns, operation
from api.pagination import newest_page
from api.services import services
from api.submit import refuse_if_deleting
from api.views import subject_out
from shared.deletion.subjects import delete_subject
from shared.errors import FieldCode, ProblemCode
from shared.fetch import ALLOWLIST_HINT, FetchBlocked, FetchError, FetchMalformed
from shared.images import ImageRejected, NormalisedImage, normalise
from shared.models import Subject
from shared.schemas import (
    Name,
    OwnerQuery,
    SubjectList,
    SubjectListQuery,
    SubjectOut,
    SubjectUpload,
    SubjectUrlRequest,
    UserId,
)
from shared.subjects import SubjectExists, latest_version, store_version

bp = Blueprint("subjects", __name__, url_prefix="/v1/subjects")

MULTIPART = ("multipart/form-data", "application/x-www-form-urlencoded")


class SubjectForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    name: Name
    if_exists: Literal["replace", "error"] = "replace"


def _from_form() -> tuple[SubjectForm, NormalisedImage]:
    try:
        form = SubjectForm.model_validate(request.form.to_dict())
    except ValidationError as exc:
        raise validation_error(fields_of(exc)) from None
    upload = request.files.get("image")
    if upload is None:
        raise validation_error([("image", "Field required", FieldCode.MISSING)])
    try:
        return form, normalise(upload.read(), find_face=True)
    except ImageRejected as exc:
        raise validation_error([("image", str(exc), FieldCode.INVALID_IMAGE)]) from None


def _from_url(body: SubjectUrlRequest) -> NormalisedImage:
    try:
        fetched = services().fetcher.get(body.image_url)
    except FetchError as exc:
        hint = ALLOWLIST_HINT if isinstance(exc, FetchBlocked) and not isinstance(exc, FetchMalformed) else ""
        raise validation_error([("image_url", f"{exc} ({exc.code.value}){hint}", FieldCode(exc.code.value))]) from None
    try:
        return normalise(fetched.data, find_face=True)
    except ImageRejected as exc:
        raise validation_error([("image_url", f"{exc} (reference_invalid)", FieldCode.REFERENCE_INVALID)]) from None


@bp.post("")
@require("generate")
@operation(
    "Store a reference photo of a person", tags=["subjects"],
    body={"multipart/form-data": SubjectUpload, "application/json": SubjectUrlRequest},
    responses={201: Returns("Stored: a new subject or a new version.", SubjectOut, headers=("Location",)),
               200: Returns("The same photo is already the current version.", SubjectOut, headers=("Location",))},
    errors=(409,),
)
def create_subject() -> tuple[Response, int, dict[str, str]]:
    form: SubjectForm | SubjectUrlRequest
    if request.mimetype == "application/json":
        form = json_body(SubjectUrlRequest)
        with services().db.begin() as session:  # refuse early: no fetch for a user being deleted
            refuse_if_deleting(session, current_principal().client_id, {form.user_id})
        image = _from_url(form)
    elif request.mimetype in MULTIPART:
        form, image = _from_form()
    else:
        raise ApiError(415, "Unsupported Media Type", "upload the image as multipart/form-data, or send JSON with "
                                                      "image_url")
    principal = current_principal()
    svc = services()
    try:
        with svc.db.begin() as session:
            refuse_if_deleting(session, principal.client_id, {form.user_id})
            stored = store_version(session, svc.storage, principal.client_id, form.user_id, form.name, image,
                                   form.if_exists)
            body_out = subject_out(stored.subject, stored.version)
    except SubjectExists:
        raise ApiError(409, "Conflict", "a subject with this name exists for this user",
                       code=ProblemCode.SUBJECT_EXISTS) from None
    except IntegrityError:  # two uploads for the same new name at once: the other one won
        raise ApiError(409, "Conflict", "another upload for this subject is in progress; retry") from None
    status = 201 if stored.created else 200
    return jsonify(body_out.model_dump(mode="json")), status, {"Location": f"/v1/subjects/{stored.subject.id}"}


def _owned(subject_id: str, user_id: str | None) -> Subject:
    with services().db.begin() as session:
        subject = session.execute(
            select(Subject).where(Subject.id == subject_id, Subject.client_id == current_principal().client_id)
        ).scalar_one_or_none()
    if subject is None or (user_id is not None and subject.user_id != user_id):
        raise not_found("subject")
    return subject


@bp.get("")
@require("generate")
@operation("List subjects, newest first", tags=["subjects"], query=SubjectListQuery,
           responses={200: Returns("A page of subjects (each at its latest version).", SubjectList)})
def list_subjects() -> Response:
    args = query_args(SubjectListQuery)
    query = select(Subject).where(Subject.client_id == current_principal().client_id)
    if args.user_id is not None:
        query = query.where(Subject.user_id == args.user_id)
    with services().db.begin() as session:
        page, next_cursor = newest_page(session, query, Subject, args.cursor, args.limit)
        items = []
        for subject in page:
            version = latest_version(session, subject.id)
            if version is not None:
                items.append(subject_out(subject, version))
    return jsonify(SubjectList(items=items, next_cursor=next_cursor).model_dump(mode="json"))


@bp.get("/<subject_id>")
@require("generate")
@operation("Read a subject (its latest version)", tags=["subjects"], query=OwnerQuery,
           responses={200: Returns("The subject.", SubjectOut)}, errors=(404,))
def get_subject(subject_id: str) -> Response:
    args = query_args(OwnerQuery)
    subject = _owned(subject_id, args.user_id)
    with services().db.begin() as session:
        version = latest_version(session, subject.id)
    if version is None:
        raise not_found("subject")
    return jsonify(subject_out(subject, version).model_dump(mode="json"))


@bp.delete("/<subject_id>")
@require("generate")
@operation(
    "Delete a subject, every version and photo", tags=["subjects"], query=OwnerQuery,
    description="The reference embeddings computed from its photos go too, unless another subject has the same "
                "image. Jobs already accepted with it keep their reference; one that has not run yet fails "
                "`reference_invalid`.",
    responses={204: Returns("Deleted.")}, errors=(404,),
)
def remove_subject(subject_id: str) -> tuple[str, int]:
    args = query_args(OwnerQuery)
    subject = _owned(subject_id, args.user_id)
    svc = services()
    with svc.db.begin() as session:
        delete_subject(session, svc.storage, subject.id)
    return "", 204


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
