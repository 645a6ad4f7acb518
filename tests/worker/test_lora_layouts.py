"""Every SDXL LoRA layout ``load_lora_weights`` loads (``tests/lora_layouts.py`` makes them with diffusers' and
PEFT's own functions): read alike, imported by ``illustrations styles import``, used in a job, and the job's image
is the image of the same file loaded with ``load_lora_weights`` directly. Anything else is a named error."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file
from sqlalchemy import select

from shared.db import Database
from shared.lora_files import InvalidLoraFile
from shared.models import JobImage
from shared.settings import Settings
from tests.helpers import add_job, make_key, request_doc
from tests.lora_layouts import LAYOUTS, make_layout_lora
from worker.generation import run_generation
from worker.pipeline import resolve_profile
from worker.pipeline.lora_layouts import read_lora
from worker.runtime import Runtime

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    # PEFT's get_peft_model (how the maker adds LoRA layers to the text encoders) asks transformers a deprecated name.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

SEED, SCALE = 17, 0.8


@pytest.fixture(scope="module")
def files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("layouts")
    return {layout: make_layout_lora(tiny_model_dir, folder / f"{layout}.safetensors", layout, seed=3)
            for layout in LAYOUTS}


def test_every_layout_reads_as_the_same_lora(files: dict[str, Path]) -> None:
    read = {layout: read_lora(path) for layout, path in files.items()}
    unet_only = {layout: lora for layout, lora in read.items() if "+te" not in layout}
    with_te = {layout: lora for layout, lora in read.items() if "+te" in layout}
    assert len({lora.info.targets for lora in unet_only.values()}) == 1  # the same layers, whatever the names
    assert len({lora.info.targets for lora in with_te.values()}) == 1
    for layout, lora in read.items():
        assert (lora.info.rank, lora.info.alpha) == (4, 4.0), layout
        assert lora.info.text_encoder == ("+te" in layout), layout
        assert set(lora.modules) == ({"unet", "text_encoder", "text_encoder_2"} if "+te" in layout else {"unet"})
        assert len(lora.modules["unet"]) == len(read["peft"].modules["unet"]) > 0
        assert all(name.endswith(("to_q", "to_k", "to_v", "to_out.0")) for name in lora.modules["unet"])


def _direct(model_dir: Path, path: Path) -> np.ndarray:
    """The job's image from plain diffusers: the tiny pipeline (no IP-Adapter: a job without references has both at
    scale 0) with ``path`` loaded by ``load_lora_weights`` itself."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(resolve_profile("tiny", model_dir).base_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="direct")
    pipe.set_adapters(["direct"], adapter_weights=[SCALE])
    image = pipe(prompt=str(request_doc()["prompt"]), width=64, height=64, num_inference_steps=2, guidance_scale=5.0,
                 generator=[torch.Generator().manual_seed(SEED)]).images[0]
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _job_image(runtime: Runtime, db: Database, job_id: str) -> np.ndarray:
    assert run_generation(job_id, runtime) == "succeeded"
    with db.begin() as session:
        key = session.execute(select(JobImage.storage_key).where(JobImage.job_id == job_id)).scalar_one()
    return np.asarray(Image.open(io.BytesIO(runtime.storage.get(key))), dtype=np.int16)


def test_each_layout_is_imported_used_in_a_job_and_matches_a_direct_load(
    files: dict[str, Path], runtime: Runtime, db: Database, settings: Settings, tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cli import main
    from shared.settings import get_settings

    client = f"layouts-{uuid.uuid4().hex[:8]}"
    make_key(db, client)
    for key, value in {"DATABASE_URL": settings.database_url, "STORAGE_URL": settings.storage_url,
                       "VAR_DIR": str(settings.var_dir), "BROKER_URL": settings.broker_url}.items():
        monkeypatch.setenv(f"ILLUSTRATIONS_{key}", value)
    get_settings.cache_clear()
    try:
        for layout, path in files.items():
            result = CliRunner().invoke(main, ["styles", "import", layout.replace("+", "-"), str(path),
                                               "--client", client], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            assert "rank 4, alpha 4" in result.output
    finally:
        get_settings.cache_clear()
    with db.begin() as session:
        from shared.models import Client

        client_id = session.execute(select(Client.id).where(Client.name == client)).scalar_one()
    baseline = _job_image(runtime, db, add_job(db, request=request_doc(), seed=SEED, client_id=client_id))
    for layout, path in files.items():
        doc = request_doc(lora_scale=SCALE)
        doc["resolved"] = {"identity": [], "style": None,
                           "style_lora": {"name": layout.replace("+", "-"), "version": None}}
        styled = _job_image(runtime, db, add_job(db, request=doc, seed=SEED, client_id=client_id))
        assert np.abs(styled - baseline).mean() > 2, f"{layout}: the LoRA changed nothing"
        assert np.abs(styled - _direct(tiny_model_dir, path)).max() <= 1, f"{layout}: not what diffusers loads"


def test_what_no_sdxl_loader_loads_is_a_named_error(files: dict[str, Path], tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    # diffusers' own UNet-level save: no ``unet.`` prefix, so the SDXL pipeline would load nothing, silently.
    unet = UNet2DConditionModel.from_pretrained(resolve_profile("tiny", tiny_model_dir).base_dir / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"]))
    unet.save_lora_adapter(tmp_path / "bare", weight_name="bare.safetensors")
    tensors = load_file(files["peft"])
    save_file({k: v for k, v in tensors.items() if "lora_B" not in k}, tmp_path / "half.safetensors")
    save_file({"unet.conv_in.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "model.safetensors")
    save_file({"unet.conv_in.lora_A.weight": torch.zeros(4, 4),
               "transformer.block.lora_A.weight": torch.zeros(4, 4)}, tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    cases = {
        tmp_path / "bare" / "bare.safetensors": "neither the UNet nor SDXL's text encoders",
        tmp_path / "half.safetensors": "does not pair every down (A) weight with an up (B) weight",
        tmp_path / "model.safetensors": "(a full model?)",
        tmp_path / "other.safetensors": "neither the UNet nor SDXL's text encoders",
        tmp_path / "junk.safetensors": "not a readable safetensors file",
        tmp_path / "missing.safetensors": "no such file",
    }
    for path, message in cases.items():
        with pytest.raises(InvalidLoraFile, match=re.escape(message)):
            read_lora(path)
