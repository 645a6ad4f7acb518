"""The styles registry: named LoRA styles of a client, their versions, and which version a job runs.

A generation names a style as ``name`` (the active version when the job runs) or ``name@version``. At submit the
name is checked (an unknown style, or one with no ready version, is a 422); when the job runs the version is looked
up again, so a style removed in between fails the job with ``style_not_found`` and ``model.style_lora`` records the
version that ran (``name@version``).

Versions are added by ``illustrations styles import`` (a LoRA file, ready at once) and by training
(``POST /v1/styles``, ``shared.training``). A version that becomes ready becomes active. A version's objects live
under ``styles/<style id>/<version>/``: ``lora.safetensors``, and for a trained one its training pictures
(``images/<n>.png``) and, while it trains, ``checkpoint.safetensors``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import limits
from shared.db import utcnow
from shared.errors import IllustrationsError
from shared.lora_files import LoraInfo, inspect_lora
from shared.models import Style, StyleVersion
from shared.storage import Storage

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
LORA_CONTENT_TYPE = "application/octet-stream"
READY = "ready"


class StyleNotFound(IllustrationsError):
    """No such style (or version, or ready version) for this client; the message names what is missing."""


@dataclass(frozen=True)
class StyleRef:
    name: str
    version: int | None  # None: the active version

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ResolvedStyle:
    """The version a job runs with, as the GPU worker needs it."""

    style_id: str
    name: str
    version: int
    storage_key: str
    sha256: str
    base_profile: str

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(text: str) -> StyleRef:
    """``name`` or ``name@version``; raise ValueError saying what is wrong."""
    name, at, version = text.partition("@")
    if not NAME_PATTERN.fullmatch(name) or len(name) > limits.NAME_MAX_CHARS:
        raise ValueError(f"a style name is 1 to {limits.NAME_MAX_CHARS} of A-Z a-z 0-9 . _ - (not starting with . _ -)")
    if not at:
        return StyleRef(name, None)
    if not version.isdigit() or not 0 < int(version) < 2**31:
        raise ValueError("a style version is a positive integer: name@3")
    return StyleRef(name, int(version))


def validate_name(name: str) -> str:
    ref = parse_ref(name)
    if ref.version is not None:
        raise ValueError("a style name cannot contain '@'")
    return name


def find_style(session: Session, client_id: str, name: str) -> Style | None:
    return session.execute(
        select(Style).where(Style.client_id == client_id, Style.name == name)
    ).scalar_one_or_none()


def resolve(session: Session, client_id: str, ref: StyleRef) -> ResolvedStyle:
    """The ready version ``ref`` names for this client now; ``StyleNotFound`` otherwise."""
    style = find_style(session, client_id, ref.name)
    if style is None:
        raise StyleNotFound(f"no style named {ref.name!r}")
    version = ref.version if ref.version is not None else style.active_version
    if version is None:
        raise StyleNotFound(f"style {ref.name!r} has no ready version yet")
    row = session.get(StyleVersion, (style.id, version))
    if row is None:
        raise StyleNotFound(f"style {ref.name!r} has no version {version}")
    if row.status != READY or row.storage_key is None or row.sha256 is None:
        raise StyleNotFound(f"version {version} of style {ref.name!r} is {row.status}, not ready")
    return ResolvedStyle(style.id, style.name, row.version, row.storage_key, row.sha256, row.base_profile)


def storage_key(style_id: str, version: int) -> str:
    return f"styles/{style_id}/{version}/lora.safetensors"


def next_version(session: Session, client_id: str, name: str) -> tuple[Style, int]:
    """The style ``name`` of this client (created if absent) and the number its next version takes.

    The style row is locked until the caller's transaction ends (PostgreSQL), so two new versions of one style at
    once get different numbers; SQLite serialises writers already.
    """
    validate_name(name)
    style = find_style(session, client_id, name)
    if style is None:
        style = Style(client_id=client_id, name=name)
        try:
            with session.begin_nested():
                session.add(style)
        except IntegrityError:  # created by someone else meanwhile
            style = find_style(session, client_id, name)
            assert style is not None
    session.execute(select(Style.id).where(Style.id == style.id).with_for_update())
    latest = session.execute(
        select(func.max(StyleVersion.version)).where(StyleVersion.style_id == style.id)
    ).scalar_one()
    return style, (latest or 0) + 1


def import_version(session: Session, storage: Storage, client_id: str, name: str, path: Path,
                   base_profile: str, info: LoraInfo | None = None) -> StyleVersion:
    """Register ``path`` (a LoRA file) as the next ready version of ``name`` and make it active.

    ``info`` is what the caller read from the file (``styles import`` reads every layout diffusers loads, with
    diffusers); without it the header is read here (``inspect_lora``: the PEFT and kohya layouts). The file is checked
    (``InvalidLoraFile``) and stored before the version row is written; the caller commits.
    """
    validate_name(name)
    info = info or inspect_lora(path)
    data = path.read_bytes()
    style, number = next_version(session, client_id, name)
    key = storage_key(style.id, number)
    storage.put(key, data, LORA_CONTENT_TYPE)
    version = StyleVersion(
        style_id=style.id,
        version=number,
        status=READY,
        source="import",
        base_profile=base_profile,
        storage_key=key,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        rank=info.rank,
        alpha=info.alpha,
        params={"text_encoder": info.text_encoder, "targets": info.targets, "file_name": path.name[:200]},
        finished_at=utcnow(),
    )
    session.add(version)
    style.active_version = number
    session.flush()
    return version


def remove(session: Session, client_id: str, name: str, version: int | None = None) -> list[str]:
    """Remove a style (or one version of it); return the storage prefixes to delete once the caller has committed
    (each version's ``styles/<style id>/<version>/``: its LoRA file, training pictures and checkpoint).

    Removing the active version leaves the style with the newest other ready version active, or none.
    Jobs that named it and have not run yet fail with ``style_not_found``; a training of it stops (its attempt no
    longer holds a row).
    """
    style = find_style(session, client_id, name)
    if style is None:
        raise StyleNotFound(f"no style named {name!r}")
    doomed = [v for v in style.versions if version is None or v.version == version]
    if version is not None and not doomed:
        raise StyleNotFound(f"style {name!r} has no version {version}")
    prefixes = [version_prefix(style.id, v.version) for v in doomed]
    if version is None:
        session.delete(style)
    else:
        style.versions.remove(doomed[0])  # delete-orphan: the row goes at flush, and the collection stays true
        if style.active_version == version:
            ready = [v.version for v in style.versions if v.status == READY]
            style.active_version = max(ready) if ready else None
    session.flush()
    return prefixes


def version_prefix(style_id: str, version: int) -> str:
    """Every object of one version lives under this prefix."""
    return f"styles/{style_id}/{version}/"
