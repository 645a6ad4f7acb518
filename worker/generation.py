"""One generation, from a job id to a finished row: claim, read references, run, store, finish (fenced).

The task shell (``worker.tasks.generate``) only calls ``run_generation``; everything here is plain code over the
database, storage and the engine, so it is testable without Celery. The claim makes an ``Attempt``
(``worker.attempt``), which holds the attempt's state and timings and ends it; every attempt that reaches this code
leaves one ``generation_metrics`` row, written in the transaction that ends the attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import PIL.Image
from billiard.exceptions import SoftTimeLimitExceeded
from PIL.PngImagePlugin import PngInfo
from pydantic import ValidationError
from sqlalchemy.orm import Session

from shared import faces, jobs, regions, styles
from shared.db import is_unavailable
from shared.errors import ErrorCode, JobFailure
from shared.models import Job
from shared.storage import ObjectNotFound, StorageError
from shared.stored_request import StoredRef, StoredRequest, UrlRef
from worker import limits, observability
from worker.attempt import Attempt, JobInput
from worker.runtime import Runtime, SetupFailed

if TYPE_CHECKING:
    from worker.pipeline.engine import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
BASE_MODELS = {"sdxl": "stable-diffusion-xl-base-1.0", "tiny": "tiny-sdxl-random"}


# --- 1. Claim and read ------------------------------------------------------------------------------------------


JOB_COLUMNS = (Job.request, Job.seed, Job.prompt_used, Job.created_at, Job.started_at, Job.client_id, Job.user_id,
               Job.queue)


def _read_job(session: Session, claim: jobs.Claim) -> JobInput:
    """The claimed row (returned by the claim itself) and the style it names, resolved now."""
    row = claim.row
    try:
        stored: StoredRequest | None = StoredRequest.model_validate(row.request)
    except ValidationError:
        stored = None  # fails in the run, once, with its metrics row
    style, style_error = None, None
    if stored is not None and stored.resolved.style_lora is not None:
        try:
            style = styles.resolve(session, row.client_id, stored.resolved.style_lora)
        except styles.StyleNotFound as exc:
            style_error = str(exc)
    prompt = row.prompt_used or (stored.prompt if stored is not None else "")
    return JobInput(stored, row.seed, prompt, row.created_at, row.started_at, row.client_id, row.user_id, row.queue,
                    style, style_error)


# --- 2. References and the LoRA ---------------------------------------------------------------------------------


def _load_reference(runtime: Runtime, reference: StoredRef) -> PIL.Image.Image:
    try:
        data = runtime.storage.get(reference.storage_key)
    except ObjectNotFound:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, "a reference image is no longer stored") from None
    try:
        image = PIL.Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
    except (OSError, SyntaxError, ValueError):
        raise JobFailure(ErrorCode.REFERENCE_INVALID, "a stored reference image cannot be decoded") from None
    return image.convert("RGB")


def _stored(reference: StoredRef | UrlRef) -> StoredRef:
    if isinstance(reference, UrlRef):  # the preparation step stores every URL reference before a GPU sees the job
        raise JobFailure(ErrorCode.INTERNAL, "a reference given by URL reached a GPU worker unfetched")
    return reference


def _embedding(runtime: Runtime, adapter: int, reference: StoredRef, attempt: Attempt,
               image: Callable[[], PIL.Image.Image], crop: str | None = None) -> Any:
    embedding, hit = runtime.embeddings().embedding(adapter, reference.sha256, image, crop)
    attempt.embeddings_cached += int(hit)
    observability.embedding_looked_up(hit)
    return embedding


def _person(runtime: Runtime, reference: StoredRef | UrlRef, attempt: Attempt) -> Any:
    """A person's identity embedding: of the face crop (``shared.faces``), or of the whole photo when no face was
    found. A photo stored before faces were detected is looked at now (the same detector)."""
    from worker.pipeline.engine import IDENTITY

    reference = _stored(reference)
    box = faces.as_box(reference.face)
    detector = reference.detector
    loaded: PIL.Image.Image | None = None
    if detector is None:
        loaded = _load_reference(runtime, reference)
        found = faces.detect(loaded)
        box, detector = found.box, found.detector
    attempt.faces_found += int(box is not None)

    def image() -> PIL.Image.Image:
        return faces.crop(loaded if loaded is not None else _load_reference(runtime, reference), box)

    return _embedding(runtime, IDENTITY, reference, attempt, image, faces.crop_tag(box, detector))


def _style(runtime: Runtime, reference: StoredRef | UrlRef, attempt: Attempt) -> Any:
    from worker.pipeline.engine import STYLE

    stored = _stored(reference)
    return _embedding(runtime, STYLE, stored, attempt, lambda: _load_reference(runtime, stored))


def _lora_request(runtime: Runtime, job: JobInput) -> Any:
    from worker.pipeline.lora import LoraRequest

    style = job.style
    if style is None:
        return None
    profile = runtime.engine().profile.name
    if style.base_profile != profile:
        raise JobFailure(ErrorCode.STYLE_NOT_FOUND, f"style {style.label} was made for the {style.base_profile} "
                                                    f"model, not {profile}")

    def fetch() -> bytes:
        try:
            return runtime.storage.get(style.storage_key)
        except ObjectNotFound:
            raise JobFailure(ErrorCode.STYLE_NOT_FOUND, f"the file of style {style.label} is gone") from None

    return LoraRequest(key=style.sha256, scale=job.request.params.lora_scale, fetch=fetch)


def _request(runtime: Runtime, job: JobInput, attempt: Attempt) -> GenerationRequest:
    from worker.pipeline.engine import GenerationRequest

    request = job.request
    params, resolved = request.params, request.resolved
    try:
        used = regions.regions_used(resolved.given_regions())
    except ValueError:  # a mix of given and missing regions: refused at submit, so never written by the API
        raise JobFailure(ErrorCode.INTERNAL, "the job's stored regions cannot be used") from None
    attempt.regions = len(used) if used is not None else 0
    return GenerationRequest(
        prompt=job.prompt_used,
        negative_prompt=request.negative_prompt,
        width=params.width,
        height=params.height,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        seed=job.seed,
        num_images=params.num_images,
        identity_embeds=tuple(_person(runtime, ref, attempt) for ref in resolved.identity),
        identity_scale=params.identity_scale,
        identity_regions=tuple(used or ()),
        style_embeds=_style(runtime, resolved.style, attempt) if resolved.style is not None else None,
        style_scale=params.style_scale,
        content_scale=params.content_scale,
        lora=_lora_request(runtime, job),
        quality=params.quality,
    )


def _generate(runtime: Runtime, attempt: Attempt) -> GenerationResult:
    from worker.pipeline.lora import LoraLoadFailed

    job = attempt.job
    if job.style_error is not None:
        raise JobFailure(ErrorCode.STYLE_NOT_FOUND, job.style_error)
    engine = runtime.engine()
    if job.request.params.quality == "draft" and engine.draft_error is not None:
        raise SetupFailed(engine.draft_error)  # before any reference is read: this worker cannot make drafts
    started = time.monotonic()
    request = _request(runtime, job, attempt)
    references_s = time.monotonic() - started
    try:
        result = engine.run(request, on_step=attempt.on_step)
    except LoraLoadFailed:
        label = job.style.label if job.style else "?"
        raise JobFailure(ErrorCode.STYLE_NOT_FOUND, f"style {label} cannot be loaded on this model") from None
    attempt.load_s = references_s + result.prepare_s
    attempt.inference_s = result.inference_s
    attempt.lora_resident = result.lora.resident if result.lora else None
    attempt.peak_memory_bytes = result.peak_memory_bytes
    observability.compiled(result.compiles, result.recompiles)
    return result


# --- 3. Store (4. finish: ``Attempt.succeed``) -----------------------------------------------------------------


def _encode(image: PIL.Image.Image, fmt: str, runtime: Runtime, job: JobInput, index: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        info = None
        if runtime.settings.png_metadata:  # off by default: memoir text must not leak into files
            info = PngInfo()
            info.add_text("prompt", job.prompt_used)
            info.add_text("seed", str(job.seed + index))
        image.save(buffer, format="PNG", compress_level=runtime.settings.png_compress_level, pnginfo=info)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()


def _store(runtime: Runtime, claim: jobs.Claim, job: JobInput, images: list[PIL.Image.Image]) -> list[jobs.StoredImage]:
    fmt = job.request.params.output_format
    stored = []
    for index, image in enumerate(images):
        data = _encode(image, fmt, runtime, job, index)
        # Per-attempt keys: a losing attempt can never overwrite the winner's images.
        key = f"jobs/{claim.job_id}/{claim.attempt}/{index}.{fmt}"
        runtime.storage.put(key, data, CONTENT_TYPES[fmt])
        stored.append(
            jobs.StoredImage(
                index=index,
                storage_key=key,
                content_type=CONTENT_TYPES[fmt],
                width=image.width,
                height=image.height,
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
            )
        )
    return stored


def _model_info(runtime: Runtime, job: JobInput) -> dict[str, Any]:
    engine = runtime.engine()
    return {
        "profile": engine.profile.name,
        "base": BASE_MODELS.get(engine.profile.name, engine.profile.name),
        "ip_adapter": engine.profile.identity_weight.removesuffix(".safetensors"),
        "revision": engine.revision,
        "device": engine.device,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "style_lora": job.style.label if job.style else None,
        "variant": job.variant,
        "quality": job.request.params.quality,
        **({"draft_lora": engine.profile.draft.weight.removesuffix(".safetensors")}
           if job.request.params.quality == "draft" else {}),
    }


@contextlib.contextmanager
def _not_busy_after(runtime: Runtime) -> Iterator[None]:
    busy = observability.BUSY.labels(observability.gpu_label())
    busy.set(1)
    try:
        yield
    finally:
        runtime.busy = False
        busy.set(0)


def run_generation(job_id: str, runtime: Runtime) -> str:
    """Run one job to its end (or give it back); returns what happened, for the worker log."""
    from worker.pipeline.engine import Interrupted, VariantUnavailable

    # 1. Claim and read the row in one transaction: only a queued job runs; a re-delivery is dropped here.
    with runtime.db.begin() as session:
        claim = jobs.started(session, job_id, runtime.worker_name, runtime.settings.lease_s, read=JOB_COLUMNS)
        if not isinstance(claim, jobs.Claim):
            log.info("job %s not run: %s", job_id, claim.value)
            return f"skipped:{claim.value}"
        job = _read_job(session, claim)
    attempt = Attempt(runtime, claim, job)
    runtime.busy = True
    with _not_busy_after(runtime), attempt.lease:
        try:
            # 2. Run the pipeline (references come from storage or the embedding cache; no network).
            result = _generate(runtime, attempt)
            # 3. Store under this attempt's keys, then 4. finish, fenced by the attempt, with the metrics row.
            store_started = time.monotonic()
            stored = _store(runtime, claim, job, result.images)
            return attempt.succeed(stored, _model_info(runtime, job), store_started=store_started)
        except Interrupted:  # canceled, lost, or the worker is shutting down
            return attempt.stopped()
        except (SetupFailed, VariantUnavailable) as exc:
            return attempt.fail(ErrorCode.SETUP_FAILED, str(exc))
        except SoftTimeLimitExceeded:
            limit = runtime.settings.task_soft_time_limit_s
            return attempt.fail(ErrorCode.TIME_LIMIT, f"the generation took longer than {limit} s")
        except JobFailure as exc:
            if exc.transient:
                return attempt.retry_or_fail(exc.code.value, exc.code, exc.message)
            return attempt.fail(exc.code, exc.message)  # permanent (invalid input, unknown style): no retry
        except StorageError:
            return attempt.retry_or_fail("storage", ErrorCode.INTERNAL, "the image store kept failing")
        except Exception as exc:
            if is_unavailable(exc):
                return attempt.retry_or_fail("database", ErrorCode.INTERNAL, "the database kept failing")
            if not limits.is_out_of_memory(exc):
                # The exception type only: a message could echo the prompt. A poison job ends here, never loops.
                log.error("job %s: unexpected %s", job_id, type(exc).__name__,
                          exc_info=runtime.settings.log_level == "DEBUG")
                return attempt.fail(ErrorCode.INTERNAL, "an unexpected error occurred while generating")
    # 5. Out of GPU memory (every other way returned above): outside the except block, so the failed call's frames
    # (and tensors) are released before the memory is freed.
    limits.free_gpu_memory()
    return attempt.fail(ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory for this size and batch")
