"""Task and queue names: the only thing the API and the workers must agree on to talk through the broker."""

from __future__ import annotations

from typing import Final, Literal

QUEUE_INTERACTIVE: Final = "illustrations.interactive"
QUEUE_BATCH: Final = "illustrations.batch"
QUEUE_MAINTENANCE: Final = "illustrations.maintenance"

GENERATE: Final = "illustrations.generate"
RELAY: Final = "illustrations.maintenance.relay"
SWEEP: Final = "illustrations.maintenance.sweep"  # expired leases and passed deadlines
UPKEEP: Final = "illustrations.maintenance.upkeep"  # slow housekeeping (expired idempotency keys)

Priority = Literal["interactive", "batch"]

QUEUE_BY_PRIORITY: Final[dict[str, str]] = {"interactive": QUEUE_INTERACTIVE, "batch": QUEUE_BATCH}
GPU_QUEUES: Final = (QUEUE_INTERACTIVE, QUEUE_BATCH)
