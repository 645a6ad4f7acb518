"""``illustrations worker --gpus``: one Celery worker process per GPU, each pinned with ``CUDA_VISIBLE_DEVICES``.

Each per-GPU worker is a separate ``illustrations worker --gpus N`` process (prefork, concurrency 1, prefetch 1,
hostname ``gpu<N>@<host>``); it loads its pipeline in its pool child before consuming. The launcher only starts
them, forwards SIGTERM/SIGINT (Celery's warm or soft shutdown lets a running job finish or re-queue it), and starts
again one that exits while the others keep serving. It never imports torch: GPUs are counted from
``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi``, and CUDA is only ever initialised inside the pinned processes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

CPU = "cpu"
NVIDIA_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class Device:
    """One worker process: ``cuda_visible_devices`` None means the CPU (every GPU hidden)."""

    cuda_visible_devices: str | None
    name: str  # gpu0, gpu1, ... or cpu

    def hostname(self, host: str) -> str:
        return f"{self.name}@{host}"

    def environment(self) -> dict[str, str]:
        # PCI order: the same indexes nvidia-smi shows (CUDA's default order puts the fastest GPU first).
        return {"CUDA_VISIBLE_DEVICES": self.cuda_visible_devices if self.cuda_visible_devices is not None else "",
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else those ``nvidia-smi`` lists."""
    environ = dict(os.environ) if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        value = environ["CUDA_VISIBLE_DEVICES"].strip()
        if not value or value.startswith("-"):
            return []  # "" or "-1" hide every GPU
        return [part.strip() for part in value.split(",") if part.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        result = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip().isdigit()]


def parse_gpus(spec: str | None, visible: Sequence[str]) -> list[Device]:
    """``--gpus``: ``0,1,...`` (ids or UUIDs), ``all`` (every visible GPU), ``cpu``; None: all visible, else cpu."""
    if spec is None:
        spec = "all" if visible else CPU
    spec = spec.strip()
    if spec == CPU:
        return [Device(None, CPU)]
    ids = list(visible) if spec == "all" else [part.strip() for part in spec.split(",") if part.strip()]
    if not ids:
        raise ValueError("`--gpus all` found no GPU (CUDA_VISIBLE_DEVICES, nvidia-smi); use --gpus cpu")
    if len(set(ids)) != len(ids):
        raise ValueError(f"`--gpus` names a GPU twice: {spec}")
    devices = []
    for position, gpu in enumerate(ids):
        if not re.fullmatch(r"[A-Za-z0-9:._-]+", gpu):
            raise ValueError(f"`--gpus` takes GPU indexes or UUIDs separated by commas, got {gpu!r}")
        devices.append(Device(gpu, f"gpu{gpu if gpu.isdigit() else position}"))
    return devices


def host_part(hostname: str | None, default: str) -> str:
    """The host of ``name@host`` (or the whole value without '@'), for ``gpu<N>@<host>`` names."""
    if not hostname:
        return default
    return hostname.rpartition("@")[2] or default


class Supervisor:
    """Runs one child per device, restarts a child that exits, and stops them all on SIGTERM/SIGINT."""

    def __init__(self, commands: dict[str, list[str]], environments: dict[str, dict[str, str]],
                 restart_delay_s: float, stop_timeout_s: float = 60.0) -> None:
        self.commands = commands
        self.environments = environments
        self.restart_delay_s = restart_delay_s
        self.stop_timeout_s = stop_timeout_s
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._signal: int = signal.SIGTERM

    def _start(self, name: str) -> None:
        env = {**os.environ, **self.environments[name]}
        self.children[name] = subprocess.Popen(self.commands[name], env=env)
        log.info("started %s (pid %d, CUDA_VISIBLE_DEVICES=%s)", name, self.children[name].pid,
                 env.get("CUDA_VISIBLE_DEVICES"))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum
        self._stopping.set()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for name in self.commands:
                self._start(name)
            restart_at: dict[str, float] = {}
            while not self._stopping.wait(0.5):
                for name, child in self.children.items():
                    if child.poll() is not None and name not in restart_at:
                        log.error("%s exited with %s; restarting in %.0f s", name, child.returncode,
                                  self.restart_delay_s)
                        restart_at[name] = time.monotonic() + self.restart_delay_s
                for name, when in list(restart_at.items()):
                    if time.monotonic() >= when:
                        del restart_at[name]
                        self._start(name)
            return self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self) -> int:
        forwarded = signal.SIGTERM if self._signal == signal.SIGINT else self._signal
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(forwarded)
        deadline = time.monotonic() + self.stop_timeout_s
        for name, child in self.children.items():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in %.0f s; killing it", name, self.stop_timeout_s)
                child.kill()
                child.wait()
        return 0


def child_command(device: Device, queues: str, hostname: str) -> list[str]:
    return [sys.executable, "-m", "cli", "worker", "--gpus", device.cuda_visible_devices or CPU,
            "--queues", queues, "--hostname", hostname]
