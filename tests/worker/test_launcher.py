"""`worker --gpus` parsing and GPU discovery (the processes themselves: tests/system/test_gpu_workers.py)."""

from __future__ import annotations

import pytest

from worker.launcher import CPU, Device, host_part, parse_gpus, visible_gpus


def test_gpus_spec() -> None:
    assert parse_gpus("0,1", []) == [Device("0", "gpu0"), Device("1", "gpu1")]  # explicit ids need no discovery
    assert parse_gpus("all", ["2", "3"]) == [Device("2", "gpu2"), Device("3", "gpu3")]
    assert parse_gpus(None, ["0"]) == [Device("0", "gpu0")]  # default: every visible GPU
    assert parse_gpus(None, []) == [Device(None, CPU)]  # ... else the CPU
    assert parse_gpus("cpu", ["0"]) == [Device(None, CPU)]
    uuid = "GPU-8c4f3d2e-1a2b-4c5d-9e8f-0123456789ab"
    assert parse_gpus(uuid, []) == [Device(uuid, "gpu0")]  # a UUID is named by its position
    for spec, message in (("all", "found no GPU"), ("0,0", "names a GPU twice"), ("0;1", "GPU indexes or UUIDs")):
        with pytest.raises(ValueError, match=message):
            parse_gpus(spec, [])


def test_each_device_pins_its_process() -> None:
    pci = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # indexes as nvidia-smi numbers them
    assert Device("1", "gpu1").environment() == {"CUDA_VISIBLE_DEVICES": "1", **pci}
    assert Device(None, CPU).environment() == {"CUDA_VISIBLE_DEVICES": "", **pci}  # the CPU worker sees no GPU
    assert Device("1", "gpu1").hostname("box") == "gpu1@box"
    assert host_part("gpu0@box-7", "default") == "box-7"
    assert host_part("box-8", "d") == "box-8"
    assert host_part(None, "default") == "default"


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0, 2"}) == ["0", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"PATH": "/nonexistent"}) == []  # no nvidia-smi: no GPU
