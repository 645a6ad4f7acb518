"""Settings: one typed object built from ``ILLUSTRATIONS_*`` environment variables, read once.

With no variable set, the defaults give the embedded mode: SQLite (WAL, busy timeout) and local storage under
``./var/``, an embedded Redis under ``./var/`` and the ``tiny`` model. URLs switch each part to PostgreSQL, Redis,
S3 and ``sdxl``. Every timer is a setting, so tests run them in seconds.

A malformed value stops the process at start with a message naming the variable (``SettingsError``).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic_settings
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.experiments import Experiment

ENV_PREFIX = "ILLUSTRATIONS_"


class SettingsError(RuntimeError):
    """A malformed ``ILLUSTRATIONS_*`` variable; the message names each bad variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_default=True)

    # --- Places -------------------------------------------------------------------------------------------------
    var_dir: Path = Field(
        Path("var"), description="Working folder of the embedded mode: the SQLite database, local storage, the "
        "embedded Redis, the models, logs and metrics folders live under it unless set elsewhere."
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL of the database, e.g. `postgresql+psycopg2://user:pw@host/db`. Unset: SQLite "
        "`var/illustrations.db` (WAL, busy timeout; the schema is brought up to date at every start)."
    )
    broker_url: str = Field(
        "", description="Celery broker URL, e.g. `redis://redis:6379/0` or `amqp://user:pass@host:5672/vhost`. "
        "Unset: the embedded Redis on `var/redis/redis.sock`, started by the first process that needs it."
    )
    storage_url: str = Field(
        "", description="Where images, subject photos, embeddings and LoRA files go: a folder, or "
        "`s3://bucket/prefix`. Unset: `var/storage`."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint the services talk to (MinIO, rclone, another S3-compatible store). Unset: AWS."
    )
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint written into presigned image URLs: what clients can reach. Unset: the endpoint "
        "the services use."
    )
    s3_region: str = Field("us-east-1", description="S3 region (signing).")
    presign_expires_s: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="Lifetime of the presigned image URLs the API redirects to on S3."
    )
    s3_connect_timeout_s: float = Field(5.0, gt=0, description="S3 socket connect timeout.")
    s3_read_timeout_s: float = Field(30.0, gt=0, description="S3 socket read timeout.")
    s3_max_attempts: int = Field(3, ge=1, description="Attempts per S3 call (botocore standard retries).")
    s3_access_key_id: str | None = Field(None, description="S3 access key id (set it with the secret key, or "
                                         "neither). Unset: boto3's own lookup (AWS defaults).")
    s3_secret_access_key: str | None = Field(None, description="S3 secret access key (a secret: keep it in the "
                                             "orchestrator's Secret, never in a ConfigMap or image).")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path", description="S3 addressing: `path` (`host/bucket/key`), `virtual` (`bucket.host/key`) or `auto` "
        "(botocore decides)."
    )
    # boto3 >= 1.36 sends CRC checksums by default; several S3-compatible stores reject them.
    s3_checksum_mode: Literal["when_supported", "when_required"] = Field(
        "when_required", description="When boto3 sends and checks CRC checksums: boto3 >= 1.36 sends them by "
        "default (`when_supported`), which some S3-compatible stores reject."
    )

    # --- Database -----------------------------------------------------------------------------------------------
    sqlite_busy_timeout_ms: int = Field(10_000, ge=0, description="How long a SQLite writer waits for the lock.")
    db_pool_size: int = Field(5, ge=1, description="Database connections pooled per process.")
    db_connect_timeout_s: float = Field(3.0, gt=0, description="Connect timeout for PostgreSQL.")
    db_statement_timeout_ms: int = Field(15_000, ge=0, description="PostgreSQL `statement_timeout` (0 = none).")

    # --- Model --------------------------------------------------------------------------------------------------
    model_profile: Literal["tiny", "sdxl"] = Field(
        "tiny", description="`tiny`: random weights of the same architecture family, generated locally (`illustrations "
        "models make-tiny`); `sdxl`: the real weights from a local folder or the Hugging Face cache."
    )
    model_dir: Path | None = Field(
        None, description="Folder of the profile's weights (`base/`, `ip-adapter/`). Unset: `var/models/<profile>` "
        "(for `sdxl` also the Hugging Face cache)."
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads on CPU (0 = torch's default).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA (bfloat16, SDPA attention) when a GPU is visible, else CPU (float32)."
    )
    torch_compile: bool = Field(False, description="torch.compile the UNet in place at load (slow first job, faster "
                                "after). Jobs then run one fixed batch layout so that one graph serves each size "
                                "bucket; LoRA styles are hot-swapped into one slot (see docs/operations.md).")
    compile_sizes: str = Field(
        "1024x1024,1152x896,896x1152,1216x832,832x1216,1344x768,768x1344",
        description="With torch_compile: the sizes (WIDTHxHEIGHT, comma-separated, at most 8) the compiled UNet runs; "
        "each compiles once. A job of another size runs the UNet uncompiled (slower, no recompile).",
    )
    lora_target_rank: int = Field(64, ge=1, le=1024, description="With torch_compile: the largest LoRA rank the "
                                  "hot-swap slot takes (its layers are padded to it; a LoRA of a higher rank fails "
                                  "its jobs style_not_found).")
    vae_tiling: bool = Field(False, description="Decode large images in tiles (less GPU memory).")
    vae_slicing: bool = Field(False, description="Decode a job's images one at a time (less GPU memory).")
    lora_slots: int = Field(4, ge=1, le=64, description="LoRA styles kept loaded per worker (the least recently used "
                            "one is replaced). A compiled worker (torch_compile) has one hot-swap slot instead.")
    embedding_cache: bool = Field(True, description="Cache reference embeddings in storage, by image sha256.")
    embedding_memory_items: int = Field(
        64, ge=0, description="Reference embeddings also kept in the worker's memory (the last N; 0 = storage only)."
    )
    png_metadata: bool = Field(False, description="Write prompt and seed into PNG text chunks (off: memoir text stays "
                               "out of files).")
    png_compress_level: int = Field(
        1, ge=0, le=9, description="zlib level of generated PNGs (1: 68 ms for 1024², level 6: 311 ms, about the same "
        "size; `bench/profile_job.py`)."
    )

    # --- API ----------------------------------------------------------------------------------------------------
    api_bind: str = Field("127.0.0.1:8000", description="Address gunicorn binds (`illustrations api --bind` "
                          "overrides).")
    api_workers: int = Field(2, ge=1, description="gunicorn worker processes.")
    api_threads: int = Field(8, ge=1, description="gunicorn gthread threads per worker.")
    api_timeout_s: int = Field(70, ge=1, description="gunicorn worker timeout (above the longest Prefer: wait).")
    api_graceful_timeout_s: int = Field(30, ge=1, description="gunicorn graceful stop: how long requests in flight "
                                        "may finish after SIGTERM.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After of a 503 when a dependency is down.")
    public_base_url: str | None = Field(
        None, description="Base of the absolute URLs (images, `links`) in answers and webhook bodies, as clients reach "
        "the API (e.g. `https://illustrations.example`). Unset: answers use the request's host; webhook bodies use "
        "the API's own address in the embedded mode (`illustrations up` and `demo` set it to the address they bind), "
        "and elsewhere a worker of the webhooks queue refuses to start without it."
    )

    # --- Queue and timers ---------------------------------------------------------------------------------------
    publish_timeout_s: float = Field(2.0, gt=0, description="Broker connect timeout (and how long a publishing "
                                     "process retries a connect): a publish to a dead broker fails fast, and the "
                                     "relay publishes the job later.")
    broker_socket_timeout_s: float = Field(5.0, gt=0, description="Broker socket timeout (Redis transport; the "
                                           "connect timeout is ILLUSTRATIONS_PUBLISH_TIMEOUT_S).")
    visibility_timeout_s: int = Field(
        7_200, ge=1, description="Redis redelivers unacked tasks after this: keep it above the longest job (the "
        "hard time limit; checked at start)."
    )
    lease_s: float = Field(60.0, gt=0, description="How long a claim is valid without a heartbeat.")
    heartbeat_s: float = Field(15.0, gt=0, description="How often a running job renews its lease (below the lease; "
                               "checked at start).")
    relay_interval_s: float = Field(5.0, gt=0, description="How often beat runs the outbox relay and sweep (leases, "
                                    "deadlines).")
    relay_delay_s: float = Field(10.0, ge=0, description="How old an unpublished job must be before the relay "
                                 "publishes it.")
    republish_after_s: float = Field(
        1800.0, gt=0, description="A job published this long ago and still queued is published again (its message "
        "may have died with a worker that had fetched it); a twin message is dropped at the claim."
    )
    max_attempts: int = Field(3, ge=1, description="Attempts (every claim counts) before a job fails `worker_lost`, "
                              "or before a transient fault becomes the job's failure.")
    task_soft_time_limit_s: int = Field(600, ge=1, description="Soft time limit of one generation: the job fails "
                                        "`time_limit`.")
    task_time_limit_s: int = Field(660, ge=1, description="Hard time limit of one generation (kills the pool child; "
                                   "the job fails `time_limit`). Above the soft one.")
    worker_proc_alive_timeout_s: float = Field(300.0, gt=0, description="Time a pool child may take to load its model.")
    worker_restart_delay_s: float = Field(
        5.0, ge=0, description="`worker --gpus`: wait before restarting a per-GPU worker that exited."
    )
    progress_interval_s: float = Field(0.5, ge=0, description="Minimum time between progress writes (the cancel flag "
                                       "is read with them).")
    worker_prefetch_multiplier: int = Field(1, ge=1, description="Celery prefetch of generation workers (keep 1: a "
                                            "GPU worker holds one job).")
    worker_soft_shutdown_s: float = Field(
        20.0, ge=0, description="Grace period after SIGTERM: a running job may finish, then it is given back "
        "(Celery soft shutdown; keep it below the orchestrator's kill timeout minus a few seconds; 0 = off)."
    )
    retry_backoff_s: float = Field(5.0, ge=0, description="First wait before a job given back after a transient "
                                   "fault runs again; doubled per attempt, with jitter.")
    retry_backoff_max_s: float = Field(300.0, ge=0, description="Longest wait between two attempts of a job.")
    db_retry_s: float = Field(2.0, gt=0, description="First wait of a worker that finds the database down "
                              "before it hands the message back or retries its write (doubled per try, with jitter).")
    db_retry_max_s: float = Field(30.0, gt=0, description="Longest wait of a worker between two database tries.")
    client_publish_cap: int = Field(
        100, ge=0, description="Most jobs of one client waiting in one broker queue; the rest wait in the "
        "database and the relay publishes them as room frees (fairness between clients; 0 = no cap). Keep it above "
        "what the GPU fleet takes in one relay interval, or workers idle between rounds."
    )
    api_key_cache_s: float = Field(
        5.0, ge=0, description="How long an API process trusts a key it has checked before it reads the key again "
        "(saves two statements and a transaction per request; also how long a revoked key, or an expiry moved "
        "earlier by hand, may still be accepted by a process that saw it; 0 = read it on every request)."
    )
    idempotency_ttl_s: float = Field(
        90_000.0, gt=0, description="How long an Idempotency-Key is remembered (25 h; the contract promises >= 24 h)."
    )
    idempotency_lock_s: float = Field(
        120.0, gt=0, description="How long a request holds its Idempotency-Key while in flight; a request that "
        "died holding it frees it after this (keep it above the API timeout; checked at start)."
    )
    maintenance_interval_s: float = Field(
        300.0, gt=0, description="How often beat runs slow upkeep (forgetting expired idempotency keys and result "
        "cache entries)."
    )
    result_cache: bool = Field(
        True, description="Answer a request with an explicit seed whose images were already made (same client, "
        "inputs and model revision) from the stored images, and let an identical request that arrives while the "
        "first is queued or running follow it (one GPU run). false: every request runs."
    )
    cache_retention_s: float = Field(
        30 * 86_400.0, gt=0, description="How long (30 d) a finished job's images answer identical requests "
        "(older entries miss and upkeep deletes them; the images stay with their jobs)."
    )

    # --- The v1 contract: waiting, quotas, rate limits, fetching, deletion, prompts --------------------------------
    prefer_wait_max_s: float = Field(
        60.0, ge=0, le=60, description="Longest `Prefer: wait=N` honoured (the contract allows N <= 60)."
    )
    compat_wait_s: float = Field(25.0, ge=0, le=60, description="Default wait of POST /api/illustrations/generate "
                                 "(AutoBio's route; `Prefer: wait` overrides it).")
    wait_recheck_s: float = Field(
        5.0, gt=0, description="A waiting request re-reads its job this often even without a notification (a safety "
        "net for a dropped LISTEN connection on PostgreSQL)."
    )
    wait_poll_s: float = Field(
        0.5, gt=0, description="SQLite has no LISTEN/NOTIFY: a waiting request re-reads its job this often instead."
    )
    listen_reconnect_s: float = Field(1.0, gt=0, description="Pause before the LISTEN connection is re-opened.")
    max_queued_jobs_per_client: int = Field(
        1_000, ge=0, description="Queued jobs a client may have before submissions get 429 (0 = no cap); "
        "clients.max_queued_jobs overrides it per client."
    )
    quota_retry_after_s: int = Field(30, ge=1, description="Retry-After of a 429 for a full queue quota.")
    rate_limit: str = Field(
        "300/second", description="Requests per API key (flask-limiter syntax, e.g. '10/second;600/minute'); "
        "requests without a valid key count against the caller's address instead. Empty = no limit."
    )
    rate_limit_storage_url: str | None = Field(
        None, description="Where request counts live (limits' storage URL). Unset: the Redis broker, else memory "
        "(a count per process)."
    )
    trusted_proxy_hops: int = Field(
        0, ge=0, le=5, description="Proxies in front of the API whose X-Forwarded-For is trusted (werkzeug's "
        "ProxyFix): the caller's address, which a request without a valid key is rate-limited by, is taken that many "
        "hops from the right of X-Forwarded-For. 0 = the TCP peer; set 1 behind one load balancer or ingress that "
        "sets the header, never more hops than there are proxies (a client could then choose its address)."
    )
    fetch_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts or CIDR networks the URL fetcher (reference photos, webhook "
        "deliveries) may reach even when they are not public, for tests and private deployments: comma-separated "
        "(`127.0.0.1,10.0.0.0/8,hooks.internal`) or a JSON list."
    )
    fetch_timeout_s: float = Field(15.0, gt=0, description="Whole-fetch deadline of a reference URL (all redirects).")
    fetch_connect_timeout_s: float = Field(5.0, gt=0, description="TCP/TLS connect timeout of the URL fetcher.")
    fetch_ca_bundle: Path | None = Field(None, description="CA bundle for https fetches. Unset: certifi's.")
    deletion_retry_s: float = Field(
        2.0, gt=0, description="A user deletion waiting for running jobs to stop is tried again after this."
    )
    deletion_lease_s: float = Field(120.0, gt=0, description="How long one run of a user deletion holds it.")
    tokenizer_dir: Path | None = Field(
        None, description="CLIP tokenizer files (vocab.json, merges.txt) for prompt building. Unset: "
        "`<model_dir>/base/tokenizer`. Missing: token counts are estimated (and the warning says so)."
    )

    # --- Webhooks (Standard Webhooks) ----------------------------------------------------------------------------
    webhook_secret_keys: list[str] = Field(
        default_factory=list, description="Fernet keys (JSON list) that encrypt the clients' webhook secrets at rest; "
        "the first encrypts, every one decrypts (MultiFernet: add a new key first to rotate, then run `illustrations "
        "webhooks reencrypt`). Required once a database URL is set (signing refuses to start without it); every CPU "
        "worker and CLI process must share it. Empty: a key file under var_dir (embedded mode only)."
    )
    webhook_dispatch_interval_s: float = Field(
        2.0, gt=0, description="How often beat sends the webhook events that are due to `illustrations.webhooks`."
    )
    webhook_lease_s: float = Field(
        60.0, gt=0, description="How long a webhook event sent to the queue stays claimed before beat may send it "
        "again (keep it above the delivery timeout; checked at start)."
    )
    webhook_timeout_s: float = Field(15.0, gt=0, description="Whole-request deadline of one webhook delivery.")
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="Waits before each retry of an undelivered webhook (JSON list; about a day in all, 8 attempts); "
        "after the last one the event is `failed`.",
    )
    webhook_retry_jitter: float = Field(
        0.1, ge=0, le=1, description="Each wait is stretched or shrunk by up to this fraction (spreads retries)."
    )
    webhook_retry_after_max_s: float = Field(
        3600.0, ge=0, description="A receiver's `Retry-After` is honoured (when longer than the schedule's step) up "
        "to this."
    )
    webhook_secret_overlap_s: float = Field(
        86_400.0, ge=0, description="After `webhooks secret --rotate`, how long the previous secret still signs "
        "(both signatures are sent, space-separated)."
    )
    webhook_dispatch_batch: int = Field(500, ge=1, description="Most webhook events beat sends in one round.")

    # --- Style training -----------------------------------------------------------------------------------------
    training_checkpoint_every: int = Field(
        250, ge=1, description="A training writes a checkpoint (LoRA and AdamW state) to storage every N steps, "
        "and when it is stopped by SIGTERM; a killed training resumes from the last one."
    )
    training_gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass: much less GPU memory, slower steps (2x on the "
        "tiny CPU bench)."
    )
    training_mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="accelerate's mixed precision: auto = bf16 on a GPU that has it, none on a CPU."
    )
    training_soft_time_limit_s: int = Field(
        6 * 3600, ge=1, description="A training running longer fails with `time_limit` (the generation limits do not "
        "apply to trainings)."
    )
    training_time_limit_s: int = Field(
        6 * 3600 + 300, ge=1, description="Hard time limit of a training (Celery kills the pool child). Above the soft "
        "one."
    )

    # --- Embedded Redis -----------------------------------------------------------------------------------------
    embedded_redis_start_timeout_s: float = Field(
        10.0, gt=0, description="Embedded mode: how long to wait for the embedded Redis to start."
    )

    # --- Flower -------------------------------------------------------------------------------------------------
    flower_address: str = Field("127.0.0.1", description="Address Flower binds (`illustrations flower --address` "
                                "overrides); keep it private: Flower's /metrics and /healthcheck stay open.")
    flower_port: int = Field(5555, ge=1, le=65535, description="Flower's port (`--port` overrides).")
    flower_basic_auth: str | None = Field(
        None, description="`user:password` for Flower's UI and API; required outside the embedded mode."
    )

    flower_unauthenticated: bool = Field(
        False, description="Let `illustrations flower` start without Basic auth outside the embedded mode (only "
        "behind an authenticating proxy). Without it, a non-embedded Flower refuses to start without "
        "ILLUSTRATIONS_FLOWER_BASIC_AUTH."
    )

    # --- Operations: metrics, experiments -------------------------------------------------------------------------
    metrics_dir: Path | None = Field(
        None, description="Parent of the prometheus_client multiprocess folders (PROMETHEUS_MULTIPROC_DIR of the "
        "API and of each worker). Unset: `var/prometheus`. Each process tree wipes its own folder at start."
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of a worker host's Prometheus exporter (0 = none; e.g. 9100); a "
        "multi-GPU `illustrations worker` serves one for all its per-GPU workers."
    )
    worker_metrics_address: str = Field(
        "0.0.0.0", description="Address the worker exporter binds (a private network: it has no auth).",  # noqa: S104
    )
    experiment: Experiment | None = Field(
        None, description='The A/B experiment (JSON): {"name": "steps-20", "share": 0.5, "steps": 20} gives half '
        "of the users (stably, by a hash of the experiment's name, the client and the user) variant b with 20 steps; "
        "also guidance_scale, style_lora, lora_scale. Unset: every job is variant a (see docs/operations.md)."
    )
    ops_page_size: int = Field(48, ge=1, le=500, description="Jobs shown on one /ops gallery page.")

    # --- Logging ------------------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line (with job_id and request_id where known); text: for "
        "reading in a terminal."
    )

    @field_validator("database_url", "broker_url", "storage_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an http(s) URL without query or fragment, e.g. https://illustrations.example")
        return value

    @field_validator("fetch_allowlist", mode="before")
    @classmethod
    def _allowlist_entries(cls, value: Any) -> Any:
        """A comma-separated list, or a JSON list (an environment variable is a string either way)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("not a valid JSON list; give host names or CIDR networks, comma-separated "
                                 "(127.0.0.1,10.0.0.0/8) or as a JSON list") from None
        return [entry.strip() for entry in text.split(",") if entry.strip()]

    @field_validator("fetch_allowlist")
    @classmethod
    def _allowlist_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _host_or_network(entry.strip()):
                raise ValueError(f"{entry!r} is neither a host name nor a CIDR network (give 127.0.0.1, "
                                 "10.0.0.0/8 or hooks.internal: no scheme, port or path)")
        return [entry.strip().lower() for entry in value]

    @field_validator("compile_sizes")
    @classmethod
    def _check_compile_sizes(cls, value: str) -> str:
        parse_sizes(value)
        return value

    @model_validator(mode="after")
    def _check_timers(self) -> Settings:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(
                f"ILLUSTRATIONS_HEARTBEAT_S ({self.heartbeat_s}) must be below ILLUSTRATIONS_LEASE_S ({self.lease_s})"
            )
        if self.task_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("ILLUSTRATIONS_TASK_TIME_LIMIT_S must be above ILLUSTRATIONS_TASK_SOFT_TIME_LIMIT_S")
        if self.idempotency_lock_s <= self.api_timeout_s:
            raise ValueError("ILLUSTRATIONS_IDEMPOTENCY_LOCK_S must be above ILLUSTRATIONS_API_TIMEOUT_S, or a slow "
                             "first request loses its key to a retry")
        if self.training_time_limit_s <= self.training_soft_time_limit_s:
            raise ValueError(
                "ILLUSTRATIONS_TRAINING_TIME_LIMIT_S must be above ILLUSTRATIONS_TRAINING_SOFT_TIME_LIMIT_S"
            )
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "ILLUSTRATIONS_VISIBILITY_TIMEOUT_S must be above ILLUSTRATIONS_TASK_TIME_LIMIT_S, "
                "or Redis delivers a long job twice"
            )
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError("ILLUSTRATIONS_WEBHOOK_LEASE_S must be above ILLUSTRATIONS_WEBHOOK_TIMEOUT_S, or a slow "
                             "receiver gets the same event twice at once")
        if any(wait < 0 for wait in self.webhook_retry_schedule_s):
            raise ValueError("ILLUSTRATIONS_WEBHOOK_RETRY_SCHEDULE_S: waits must not be negative")
        return self

    # --- Derived values -----------------------------------------------------------------------------------------
    @property
    def var_path(self) -> Path:
        return self.var_dir.resolve()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_path / 'illustrations.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def embedded_redis_socket(self) -> Path:
        path = self.var_path / "redis" / "redis.sock"
        if len(str(path)) < 100:  # unix socket paths are limited to ~107 bytes
            return path
        digest = hashlib.sha256(str(self.var_path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"illustrations-redis-{digest}.sock"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"redis+socket://{self.embedded_redis_socket}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or str(self.var_path / "storage")

    @property
    def effective_model_dir(self) -> Path:
        return (self.model_dir or self.var_dir / "models" / self.model_profile).resolve()

    @property
    def effective_metrics_dir(self) -> Path:
        return (self.metrics_dir or self.var_dir / "prometheus").resolve()

    @property
    def effective_tokenizer_dir(self) -> Path:
        return (self.tokenizer_dir or self.effective_model_dir / "base" / "tokenizer").resolve()

    @property
    def effective_public_base_url(self) -> str | None:
        """The base of absolute URLs where no request says it (webhook bodies): ``public_base_url``, else in the
        embedded mode the API's own address (``api_bind``, a wildcard bind as loopback); None elsewhere."""
        if self.public_base_url:
            return self.public_base_url
        if not self.embedded_broker:
            return None
        return address_url(self.api_bind)

    @property
    def effective_rate_limit_storage_url(self) -> str:
        """limits' storage URL: the configured one, the Redis broker, or memory (a per-process count)."""
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        if self.embedded_broker:
            return f"redis+unix://{self.embedded_redis_socket}"
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return "memory://"


_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$", re.IGNORECASE)


def _host_or_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return bool(_HOST_NAME.match(entry))
    return True


def address_url(bind: str) -> str:
    """``http://host:port`` for a bind address, a wildcard (``0.0.0.0``, ``::``, empty) as loopback."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (recognising a wildcard bind, not binding one)
        host = "127.0.0.1" if host != "::" else "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        lines.append(f"{name}: {item['msg']}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings() -> Settings:
    """Build settings from the environment now; raise ``SettingsError`` naming each malformed variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except pydantic_settings.SettingsError as exc:  # a list or JSON variable that does not decode
        found = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{found.group(1).upper()}" if found else "a setting"
        raise SettingsError(f"invalid configuration: {name}: not valid JSON (a list is written like "
                            f'["a", "b"])') from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once (tests call ``get_settings.cache_clear()`` after changing the env)."""
    return load_settings()


def parse_sizes(value: str) -> tuple[tuple[int, int], ...]:
    """``"1024x1024,1152x896"`` -> ((1024, 1024), (1152, 896)); ValueError naming what is wrong. At most 8: torch's
    recompile limit per compiled function (beyond it dynamo runs the UNet uncompiled)."""
    sizes = []
    for item in (part.strip() for part in value.split(",") if part.strip()):
        width, sep, height = item.partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise ValueError(f"a size is WIDTHxHEIGHT, got {item!r}")
        if int(width) % 8 or int(height) % 8 or not (64 <= int(width) <= 2048 and 64 <= int(height) <= 2048):
            raise ValueError(f"sizes are multiples of 8 between 64 and 2048, got {item!r}")
        sizes.append((int(width), int(height)))
    if not 1 <= len(set(sizes)) <= 8:
        raise ValueError(f"give 1 to 8 distinct sizes, got {len(set(sizes))}")
    return tuple(dict.fromkeys(sizes))
