"""Production loading: safetensors only unless allowed, single-file checkpoints offline, both backbones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from qalign_core.errors import ModelLoadError
from qalign_core.loading import save_single_file
from qalign_core.params import TransferParams
from qalign_core.pipeline import QAlignPipeline


@pytest.fixture(scope="module")
def single_file(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model as one .safetensors file in the original layout, and its weightless configs."""
    root = tmp_path_factory.mktemp("single")
    path = save_single_file(tiny_model_dir, root / "tiny.safetensors", config_dir=root / "config")
    return path, root / "config"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_single_file_checkpoint_loads_the_same_weights_offline(single_file, tiny_model_dir, monkeypatch):
    path, config = single_file
    # Any attempt to reach the Hub fails the test instead of hanging on a network that is absent.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not any(p.suffix == ".safetensors" for p in config.rglob("*")), "configs only, no weights"
    loaded = QAlignPipeline.from_pretrained(str(path), device="cpu", model_config_dir=str(config))
    reference = QAlignPipeline.from_pretrained(tiny_model_dir, device="cpu")
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded, part), getattr(reference, part)), part
    assert loaded.tokenizer("a photo of a cat").input_ids == reference.tokenizer("a photo of a cat").input_ids
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.backbone == reference.backbone and loaded.backbone.name == "sd15"


def test_pipeline_runs_from_a_single_file(single_file, photos):
    path, config = single_file
    pipe = QAlignPipeline.from_pretrained(str(path), device="cpu", model_config_dir=str(config))
    assert pipe.model_id == str(path) and pipe.native_size == 128
    result = pipe.transfer(photos[0], photos[1], TransferParams(steps=2, size=64))
    assert result.image.size == (64, 43)  # the 451 x 300 cat, whole, at 64 px


def test_settings_come_as_arguments_not_from_the_environment(single_file, monkeypatch, tmp_path):
    """The library reads no QALIGN_* variable: the service passes its settings in."""
    path, config = single_file
    monkeypatch.setenv("QALIGN_MODEL_CONFIG_DIR", str(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match="QALIGN_MODEL_CONFIG_DIR.*huggingface-cli download"):
        QAlignPipeline.from_pretrained(str(path), device="cpu")


def test_pickle_weights_are_refused_unless_allowed(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), model / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    refusal = "only .safetensors weights are loaded.*QALIGN_ALLOW_PICKLE_WEIGHTS"
    with pytest.raises(ModelLoadError, match=refusal):
        QAlignPipeline.from_pretrained(str(model), device="cpu")
    assert QAlignPipeline.from_pretrained(str(model), device="cpu", allow_pickle=True).unet is not None


def test_pickle_single_file_is_refused_before_it_is_opened(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not even read")
    with pytest.raises(ModelLoadError, match="pickle checkpoint.*give a .safetensors file"):
        QAlignPipeline.from_pretrained(str(checkpoint), device="cpu")


def test_missing_config_directory_is_named(single_file, tmp_path):
    path, _ = single_file
    with pytest.raises(ModelLoadError, match="does not exist"):
        QAlignPipeline.from_pretrained(str(path), model_config_dir=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model layout: missing model_index.json"):
        QAlignPipeline.from_pretrained(str(path), model_config_dir=str(tmp_path / "empty"))


def test_without_a_config_directory_the_error_says_how_to_get_one(single_file, monkeypatch, tmp_path):
    path, _ = single_file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match="QALIGN_MODEL_CONFIG_DIR.*huggingface-cli download"):
        QAlignPipeline.from_pretrained(str(path))


def test_make_tiny_model_single_file(tmp_path):
    from click.testing import CliRunner

    from qalign_cli.main import cli

    result = CliRunner().invoke(cli, ["make-tiny-model", str(tmp_path / "m"), "--single-file"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "tiny.safetensors").is_file()
    assert (tmp_path / "m" / "config" / "unet" / "config.json").is_file()


@pytest.mark.parametrize("backbone", ["sd15", "sdxl"])
def test_save_pretrained_loads_back_with_the_same_weights_and_backbone(backbone, tiny_models, tmp_path):
    """A diffusers pipeline: ``save_pretrained`` writes a directory ``from_pretrained`` reads back,
    its weights under their own names (the row-sharing hooks leave the module tree alone)."""
    pipe = QAlignPipeline.from_pretrained(tiny_models[backbone], device="cpu")
    pipe.save_pretrained(tmp_path / "saved")
    again = QAlignPipeline.from_pretrained(str(tmp_path / "saved"), device="cpu")
    assert again.backbone == pipe.backbone and again.backbone.name == backbone
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if backbone == "sdxl" else [])
    for part in parts:
        assert _same_weights(getattr(again, part), getattr(pipe, part)), part
    assert again.config["force_zeros_for_empty_prompt"] is (backbone == "sdxl")


def test_to_moves_and_casts_like_any_diffusers_pipeline(tiny_models):
    pipe = QAlignPipeline.from_pretrained(tiny_models["sdxl"], device="cpu")
    pipe.to(dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder_2.dtype == torch.bfloat16
    assert pipe.device.type == "cpu"


def test_an_sdxl_single_file_asks_for_sdxl_base_configs(tmp_path, monkeypatch):
    """A checkpoint with SDXL's second text encoder (``conditioner.embedders.1.model.*``) is loaded
    with SDXL base's configs, not SD 1.5's; without them in the cache the error names what to fetch."""
    from safetensors.torch import save_file

    path = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(
        ModelLoadError, match="stabilityai/stable-diffusion-xl-base-1.0.*huggingface-cli download"
    ):
        QAlignPipeline.from_pretrained(str(path))
