"""Task and queue names: the only thing the API and the workers must agree on to talk through the broker."""

from __future__ import annotations

from typing import Final, Literal

QUEUE_INTERACTIVE: Final = "illustrations.interactive"
QUEUE_BATCH: Final = "illustrations.batch"
QUEUE_MAINTENANCE: Final = "illustrations.maintenance"
# CPU work a job needs before a GPU: fetching URL references (the GPU workers never touch the network).
QUEUE_PREPARE: Final = "illustrations.prepare"
# Webhook deliveries: a CPU worker POSTs to the receivers, so a slow or dead one never holds a GPU worker.
QUEUE_WEBHOOKS: Final = "illustrations.webhooks"
# Style LoRA training: long jobs on their own workers (`illustrations worker --queues illustrations.training`).
QUEUE_TRAINING: Final = "illustrations.training"

GENERATE: Final = "illustrations.generate"
PREPARE: Final = "illustrations.prepare"
RELAY: Final = "illustrations.maintenance.relay"
DELETE_USER: Final = "illustrations.maintenance.delete_user"
SWEEP: Final = "illustrations.maintenance.sweep"  # expired leases and passed deadlines
UPKEEP: Final = "illustrations.maintenance.upkeep"  # slow housekeeping (expired idempotency keys)
TRAIN: Final = "illustrations.train"
DISPATCH_WEBHOOKS: Final = "illustrations.maintenance.webhooks"  # beat: send the due webhook events to their queue
DELIVER_WEBHOOK: Final = "illustrations.deliver_webhook"  # one event id: one attempt
# Copies a training set's pictures named by URL, subject or illustration into storage (CPU worker, prepare queue).
PREPARE_STYLE: Final = "illustrations.prepare_style"

Priority = Literal["interactive", "batch"]

QUEUE_BY_PRIORITY: Final[dict[str, str]] = {"interactive": QUEUE_INTERACTIVE, "batch": QUEUE_BATCH}
GPU_QUEUES: Final = (QUEUE_INTERACTIVE, QUEUE_BATCH)
# The CPU worker's queues (`illustrations up` runs one): maintenance, preparation and webhook deliveries.
CPU_QUEUES: Final = (QUEUE_MAINTENANCE, QUEUE_PREPARE, QUEUE_WEBHOOKS)
# A job row's `queue` says where it waits; the task that runs it there follows from it.
TASK_BY_QUEUE: Final[dict[str, str]] = {QUEUE_INTERACTIVE: GENERATE, QUEUE_BATCH: GENERATE, QUEUE_PREPARE: PREPARE}
# A style version's `queue` says where it waits; the task that runs it there follows from it.
STYLE_TASK_BY_QUEUE: Final[dict[str, str]] = {QUEUE_PREPARE: PREPARE_STYLE, QUEUE_TRAINING: TRAIN}
