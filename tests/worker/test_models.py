"""Model weights: what `models download` fetches, what `models check` reports, and sdxl from the Hugging Face cache.

No hub is reachable here: downloading itself is not exercised (it is huggingface_hub's snapshot_download with the
file list checked below). The cache lookup runs the real huggingface_hub code, offline, on a cache laid out as it
lays one out, holding the tiny model's files under the sdxl repositories' names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from shared.settings import Settings, get_settings
from worker.pipeline import Engine, GenerationRequest
from worker.pipeline.download import plan
from worker.pipeline.profiles import (
    DRAFT,
    DRAFT_REPOSITORY,
    REPOSITORIES,
    draft_missing,
    locate_profile,
    missing_files,
    resolve_profile,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

BASE_SHA, IP_SHA, DRAFT_SHA = "a" * 40, "b" * 40, "c" * 40


def run_cli(monkeypatch: pytest.MonkeyPatch, args: list[str], **env: str) -> tuple[int, str]:
    from cli import main

    for name in [name for name in os.environ if name.startswith("ILLUSTRATIONS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(f"ILLUSTRATIONS_{name}", value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, args)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def test_download_fetches_exactly_the_files_check_requires(tmp_path: Path) -> None:
    profile = resolve_profile("sdxl", tmp_path / "sdxl")
    planned = plan(profile)
    # An empty folder lacks all of them; the draft LoRA comes last (optional: final jobs run without it).
    assert [item.local_path for item in planned] == [*missing_files(profile), draft_missing(profile)]
    assert draft_missing(profile) == f"draft/{DRAFT.weight}"
    repos = {"base": "stabilityai/stable-diffusion-xl-base-1.0", "ip-adapter": "h94/IP-Adapter",
             "draft": "ByteDance/SDXL-Lightning"}
    for item in planned:
        folder, _, in_repo = item.local_path.partition("/")
        assert in_repo == item.path_in_repo
        assert item.repo_id == repos[folder]
    assert "ip-adapter/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors" in missing_files(profile)
    assert "base/tokenizer_2/tokenizer_config.json" in missing_files(profile)


def test_download_dry_run_lists_and_offline_download_says_it_needs_network(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    code, output = run_cli(monkeypatch, ["models", "download", "--to", str(tmp_path / "w"), "--dry-run"],
                           VAR_DIR=str(tmp_path))
    lines = output.strip().splitlines()
    assert code == 0
    assert len(lines) == sum(len(repo.files) for repo in (*REPOSITORIES, DRAFT_REPOSITORY))
    assert f"ByteDance/SDXL-Lightning: {DRAFT.weight} -> {tmp_path / 'w'}/draft/{DRAFT.weight}" in lines
    assert f"h94/IP-Adapter: models/image_encoder/model.safetensors -> {tmp_path / 'w'}/ip-adapter/models/" \
           "image_encoder/model.safetensors" in lines
    code, output = run_cli(monkeypatch, ["models", "download", "--to", str(tmp_path / "w")], VAR_DIR=str(tmp_path))
    assert code == 1
    assert "HF_HUB_OFFLINE is set: downloading needs network" in output
    assert not (tmp_path / "w" / "MODEL_REVISION").exists()
    code, output = run_cli(monkeypatch, ["models", "download", "--cache", "--base-revision", "v1"],
                           VAR_DIR=str(tmp_path))
    assert code == 2
    assert "pin revisions with --to DIR" in output


def test_check_reports_present_and_missing_files(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path,
                                                 tmp_path: Path) -> None:
    code, output = run_cli(monkeypatch, ["models", "check"], MODEL_DIR=str(tiny_model_dir), VAR_DIR=str(tmp_path))
    assert code == 0, output
    assert "  present  base/unet/diffusion_pytorch_model.safetensors" in output
    assert f"  present  draft/{DRAFT.weight}  (quality: draft; optional)" in output
    assert output.strip().splitlines()[-1].startswith("profile tiny complete (revision tiny-")
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "draft" / DRAFT.weight).unlink()  # optional: reported, the profile is still complete
    code, output = run_cli(monkeypatch, ["models", "check"], MODEL_DIR=str(copy), VAR_DIR=str(tmp_path))
    assert code == 0, output
    assert f"  missing  draft/{DRAFT.weight}  (quality: draft; optional)" in output
    assert f"draft jobs fail setup_failed until draft/{DRAFT.weight} is there" in output
    assert output.strip().splitlines()[-1].startswith("profile tiny complete (revision tiny-")
    (copy / "ip-adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors").unlink()
    code, output = run_cli(monkeypatch, ["models", "check"], MODEL_DIR=str(copy), VAR_DIR=str(tmp_path))
    assert code == 1
    assert "  missing  ip-adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors" in output
    assert "  present  ip-adapter/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors" in output
    assert f"lacks 1 file(s) at {copy}; run `illustrations models make-tiny {copy}`" in output
    code, output = run_cli(monkeypatch, ["models", "check"], MODEL_PROFILE="sdxl", VAR_DIR=str(tmp_path))
    assert code == 1
    assert f"illustrations models download --to {tmp_path.resolve() / 'models' / 'sdxl'}" in output


def hf_cache(tiny: Path, cache: Path) -> Path:
    """A Hugging Face cache as snapshot_download leaves one (refs/main -> snapshots/<commit>/...)."""
    for repo, sha in zip((*REPOSITORIES, DRAFT_REPOSITORY), (BASE_SHA, IP_SHA, DRAFT_SHA), strict=True):
        storage = cache / f"models--{repo.repo_id.replace('/', '--')}"
        (storage / "refs").mkdir(parents=True)
        (storage / "refs" / "main").write_text(sha)
        for rel in repo.files:
            target = storage / "snapshots" / sha / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny / repo.folder / rel, target)
    return cache


def test_sdxl_loads_offline_from_the_hugging_face_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = hf_cache(tiny_model_dir, tmp_path / "hub")
    profile = locate_profile("sdxl", tmp_path / "models" / "sdxl", explicit=False, cache_dir=cache)
    assert profile.base_dir == cache / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / BASE_SHA
    assert missing_files(profile) == []
    assert profile.revision == f"sdxl-{'a' * 12}-{'b' * 12}"  # the draft LoRA's commit is not in it
    assert profile.draft_file == cache / "models--ByteDance--SDXL-Lightning" / "snapshots" / DRAFT_SHA / DRAFT.weight
    threads = torch.get_num_threads()
    engine = Engine.load(profile, device="cpu", num_threads=1)
    torch.set_num_threads(threads)
    assert engine.draft_error is None
    draft = engine.generate(GenerationRequest(prompt="a boat", negative_prompt=None, width=64, height=64, steps=4,
                                              guidance_scale=0.0, seed=1, num_images=1, quality="draft"))[0]
    assert np.asarray(draft).shape == (64, 64, 3)
    image = engine.generate(GenerationRequest(prompt="a boat", negative_prompt=None, width=64, height=64, steps=2,
                                              guidance_scale=5.0, seed=1, num_images=1))[0]
    assert np.asarray(image).shape == (64, 64, 3)
    assert engine.revision == profile.revision
    # A configured folder is never swapped for the cache, and an incomplete cache is not used.
    explicit = locate_profile("sdxl", tmp_path / "mounted", explicit=True, cache_dir=cache)
    assert explicit.base_dir == tmp_path / "mounted" / "base"
    (profile.ip_adapter_dir / "sdxl_models/ip-adapter_sdxl_vit-h.safetensors").unlink()
    fallback = locate_profile("sdxl", tmp_path / "models" / "sdxl", explicit=False, cache_dir=cache)
    assert fallback.base_dir == tmp_path / "models" / "sdxl" / "base"


def test_settings_of_the_engine_are_documented() -> None:
    for name in ("torch_compile", "vae_tiling", "vae_slicing", "lora_slots", "embedding_cache",
                 "embedding_memory_items", "worker_restart_delay_s", "device", "torch_threads"):
        assert Settings.model_fields[name].description, name
