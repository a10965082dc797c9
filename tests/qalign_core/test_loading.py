"""Production loading: safetensors only unless allowed, and SD's single-file checkpoints offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from qalign_core.errors import ModelLoadError
from qalign_core.loading import load_components, save_single_file
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
    loaded = load_components(str(path), torch.float32, config_dir=str(config))
    reference = load_components(tiny_model_dir, torch.float32)
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded, part), getattr(reference, part)), part
    assert loaded.tokenizer("a photo of a cat").input_ids == reference.tokenizer("a photo of a cat").input_ids
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"


def test_pipeline_runs_from_a_single_file_named_by_the_environment(single_file, monkeypatch, photos):
    path, config = single_file
    monkeypatch.setenv("QALIGN_MODEL_CONFIG_DIR", str(config))
    pipe = QAlignPipeline.from_pretrained(str(path), device="cpu")
    assert pipe.model_id == str(path) and pipe.native_size == 128
    from qalign_core.params import TransferParams

    result = pipe.transfer(photos[0], photos[1], TransferParams(steps=2, size=64))
    assert result.image.size == (64, 64)


def test_pickle_weights_are_refused_unless_allowed(tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), model / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    monkeypatch.delenv("QALIGN_ALLOW_PICKLE_WEIGHTS", raising=False)
    with pytest.raises(
        ModelLoadError, match="only .safetensors weights are loaded.*QALIGN_ALLOW_PICKLE_WEIGHTS"
    ):
        load_components(str(model), torch.float32)
    assert load_components(str(model), torch.float32, allow_pickle=True).unet is not None
    monkeypatch.setenv("QALIGN_ALLOW_PICKLE_WEIGHTS", "1")
    assert load_components(str(model), torch.float32).unet is not None


def test_pickle_single_file_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    monkeypatch.delenv("QALIGN_ALLOW_PICKLE_WEIGHTS", raising=False)
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not even read")
    with pytest.raises(ModelLoadError, match="pickle checkpoint.*give a .safetensors file"):
        load_components(str(checkpoint), torch.float32)


def test_missing_config_directory_is_named(single_file, tmp_path):
    path, _ = single_file
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_components(str(path), torch.float32, config_dir=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers SD 1.5 layout: missing model_index.json"):
        load_components(str(path), torch.float32, config_dir=str(tmp_path / "empty"))


def test_without_a_config_directory_the_error_says_how_to_get_one(single_file, monkeypatch, tmp_path):
    path, _ = single_file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("QALIGN_MODEL_CONFIG_DIR", raising=False)
    with pytest.raises(ModelLoadError, match="QALIGN_MODEL_CONFIG_DIR.*huggingface-cli download"):
        load_components(str(path), torch.float32)


def test_make_tiny_model_single_file(tmp_path):
    from click.testing import CliRunner

    from qalign_cli.main import cli

    result = CliRunner().invoke(cli, ["make-tiny-model", str(tmp_path / "m"), "--single-file"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "tiny.safetensors").is_file()
    assert (tmp_path / "m" / "config" / "unet" / "config.json").is_file()
