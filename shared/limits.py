"""Every limit a client's input is held to, in one place (published in the OpenAPI document by the schemas)."""

from __future__ import annotations

from typing import Final

WIDTH_MIN: Final = 64
WIDTH_MAX: Final = 2048
HEIGHT_MIN: Final = 64
HEIGHT_MAX: Final = 2048
SIZE_MULTIPLE: Final = 8
STEPS_MIN: Final = 1
STEPS_MAX: Final = 100
GUIDANCE_MIN: Final = 0.0
GUIDANCE_MAX: Final = 30.0
NUM_IMAGES_MIN: Final = 1
NUM_IMAGES_MAX: Final = 4
SEED_MAX: Final = 2**32 - 1
ADAPTER_SCALE_MAX: Final = 2.0
LORA_SCALE_MAX: Final = 2.0
SUBJECTS_MAX: Final = 4
REGION_MIN_AREA: Final = 1 / 16  # of the picture: a person's region (``subjects[].region``) is at least this big
BATCH_MAX: Final = 100
PROMPT_MAX_CHARS: Final = 2_000
NEGATIVE_PROMPT_MAX_CHARS: Final = 1_000
METADATA_MAX_BYTES: Final = 4 * 1024
USER_ID_MAX_CHARS: Final = 255
NAME_MAX_CHARS: Final = 100
URL_MAX_CHARS: Final = 2_048
MEMORY_CONTENT_MAX_CHARS: Final = 20_000
SHORT_TEXT_MAX_CHARS: Final = 200
IDEMPOTENCY_KEY_MAX_CHARS: Final = 255
UPLOAD_MAX_BYTES: Final = 10 * 1024 * 1024
UPLOAD_MAX_PIXELS: Final = 25_000_000
REQUEST_BODY_MAX_BYTES: Final = 12 * 1024 * 1024
TRAINING_IMAGES_MIN: Final = 4
TRAINING_IMAGES_MAX: Final = 200
# The pixels of one training set's pictures in all, read from their headers before any is decoded (uploads at
# submit, every picture in the preparation step): it bounds the decoding one request can cause, which the body
# limit does not (a 1-bit PNG of 25 megapixels is 3 KB). 200 pictures of 1.25 megapixels, or 10 of 25.
TRAINING_SET_MAX_PIXELS: Final = 250_000_000
CAPTION_MAX_CHARS: Final = 1_000
PREFER_WAIT_MAX_S: Final = 60
LIST_LIMIT_MAX: Final = 100
LIST_LIMIT_DEFAULT: Final = 20
# Integer path parameters (an image's index, a style's version) are INTEGER columns: a larger number is no row.
PATH_INTEGER_MAX: Final = 2**31 - 1

# Defaults of the generation parameters (documented in the OpenAPI document through the schemas).
DEFAULT_WIDTH: Final = 1024
DEFAULT_HEIGHT: Final = 1024
DEFAULT_STEPS: Final = 30
DEFAULT_GUIDANCE: Final = 7.5
DEFAULT_IDENTITY_SCALE: Final = 0.6
DEFAULT_STYLE_SCALE: Final = 0.8
DEFAULT_CONTENT_SCALE: Final = 0.0  # InstantStyle's "style only": a reference's layout is opt-in
DEFAULT_LORA_SCALE: Final = 0.8
# ``quality: draft`` (the profiles' few-step variant, ``worker.pipeline.profiles.DRAFT``: SDXL-Lightning's 4-step
# LoRA, no classifier-free guidance): the steps and guidance a draft runs with when the request gives none.
QUALITIES: Final = ("final", "draft")
DEFAULT_QUALITY: Final = "final"
DEFAULT_DRAFT_STEPS: Final = 4
DEFAULT_DRAFT_GUIDANCE: Final = 0.0

# Fetching references by URL (the safe fetcher, shared.fetch).
FETCH_MAX_REDIRECTS: Final = 3
FETCH_MAX_BYTES: Final = UPLOAD_MAX_BYTES

# CLIP reads 77 tokens, start and end markers included: the prompt builder keeps what fits, by priority.
CLIP_MAX_TOKENS: Final = 77

# Style training (``params`` of POST /v1/styles).
TRAINING_RANK_MIN: Final = 1
TRAINING_RANK_MAX: Final = 128
TRAINING_ALPHA_MAX: Final = 512
TRAINING_STEPS_MIN: Final = 1
TRAINING_STEPS_MAX: Final = 20_000
TRAINING_LEARNING_RATE_MIN: Final = 1e-6
TRAINING_LEARNING_RATE_MAX: Final = 1e-2
TRAINING_RESOLUTION_MIN: Final = 64
TRAINING_RESOLUTION_MAX: Final = 2048
TRAINING_BATCH_MAX: Final = 8
DEFAULT_TRAINING_RANK: Final = 16
DEFAULT_TRAINING_STEPS: Final = 1_000
DEFAULT_TRAINING_LEARNING_RATE: Final = 1e-4
DEFAULT_TRAINING_RESOLUTION: Final = 1024
FEEDBACK_COMMENT_MAX_CHARS: Final = 2_000
FEEDBACK_RATING_MIN: Final = 1
FEEDBACK_RATING_MAX: Final = 5
QUALITY_RANGE_MAX_DAYS: Final = 366
