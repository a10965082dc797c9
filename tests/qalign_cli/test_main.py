"""The qalign CLI: transfers on files, the tiny model, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qalign_cli.main import cli
from qalign_core.params import TransferParams


@pytest.fixture(scope="module")
def files(tmp_path_factory, photo_bytes):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "cat.png").write_bytes(photo_bytes[0])
    (folder / "cup.jpg").write_bytes(photo_bytes[1])
    (folder / "notes.png").write_text("not an image at all")
    return folder


def _run(*args):
    return CliRunner().invoke(cli, list(args))


FAST = ["--steps", "10"]


def test_transfer_writes_a_valid_image(files, tiny_model_dir):
    out = files / "out.webp"
    result = _run(
        "transfer",
        "--structure",
        str(files / "cat.png"),
        "--appearance",
        str(files / "cup.jpg"),
        "--output",
        str(out),
        "--model",
        tiny_model_dir,
        "--method",
        "cross_image",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        # The format from the suffix; the cat's 3:2 shape kept: the longer side 128 (the tiny model's
        # native size), the shorter 128 * 300 / 451 = 85 rounded to the model's 64 px unit.
        assert image.format == "WEBP" and image.size == (128, 85)
    assert "wrote" in result.output
    assert (
        "model: Stable Diffusion 1.5, native 128 px; --size takes a multiple of 64 from 64 to 256"
        in result.output
    )


def test_transfer_saves_masked_adains_masks(files, tiny_model_dir):
    masks = files / "masks"
    result = _run(
        "transfer", "--structure", str(files / "cat.png"), "--appearance", str(files / "cup.jpg"),
        "--output", str(files / "masked.png"), "--model", tiny_model_dir, "--save-masks", str(masks), *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("structure", "appearance"):
        with Image.open(masks / f"mask_{name}.png") as image:
            assert image.size == (128, 85) and set(np.unique(np.asarray(image)).tolist()) <= {0, 255}
    plain = _run(
        "transfer", "--structure", str(files / "cat.png"), "--appearance", str(files / "cup.jpg"),
        "--output", str(files / "plain.png"), "--model", tiny_model_dir, "--adain", "plain",
        "--save-masks", str(masks), *FAST,
    )  # fmt: skip
    assert plain.exit_code == 1 and "only with --adain masked" in plain.stderr


def test_make_tiny_model(tmp_path):
    result = _run("make-tiny-model", str(tmp_path / "m"))
    assert result.exit_code == 0 and (tmp_path / "m" / "unet" / "config.json").exists()
    assert not (tmp_path / "m" / "text_encoder_2").exists()


def test_make_tiny_sdxl_model_runs_a_transfer(files, tmp_path):
    """``make-tiny-model --backbone sdxl`` writes an SDXL-shaped model the CLI runs: the 3:2 cat
    comes back whole at its aspect, 128 x 85, and the CLI names the backbone."""
    result = _run("make-tiny-model", str(tmp_path / "xl"), "--backbone", "sdxl")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "xl" / "text_encoder_2" / "config.json").exists()
    out = tmp_path / "out.png"
    run = _run(
        "transfer", "--structure", str(files / "cat.png"), "--appearance", str(files / "cup.jpg"),
        "--output", str(out), "--model", str(tmp_path / "xl"), *FAST,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    with Image.open(out) as image:
        assert image.size == (128, 85)
    assert "model: Stable Diffusion XL, native 128 px; --size takes a multiple of 32" in run.output
    refused = _run("make-tiny-model", str(tmp_path / "x2"), "--backbone", "sdxl", "--single-file")
    assert refused.exit_code != 0 and "--single-file" in refused.output


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"--structure": "missing.png"}, "cannot read image file"),
        ({"--appearance": "notes.png"}, "not a PNG, JPEG or WebP image"),
        ({"--steps": "0"}, "steps: Input should be greater than or equal to 2"),
        ({"--steps": "1000"}, "steps: Input should be less than or equal to 999"),
        ({"--skip-steps": "100"}, "skip_steps: Input should be less than or equal to 99"),
        ({"--contrast-strength": "nan"}, "contrast_strength"),
        ({"--model": "/nonexistent/model"}, "model directory '/nonexistent/model' does not exist"),
        ({"--output": "no/such/dir/out.png"}, "output directory"),
    ],
)
def test_bad_input_is_one_clear_line(files, tiny_model_dir, change, fragment):
    options = {
        "--structure": "cat.png",
        "--appearance": "cup.jpg",
        "--output": "o.png",
        "--model": tiny_model_dir,
    }
    options.update(change)
    args = ["transfer"]
    for flag, value in options.items():
        is_file = flag in ("--structure", "--appearance", "--output")
        args += [flag, str(files / value) if is_file else value]
    result = _run(*args)
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qalign: error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_hash_key_prints_a_key_and_its_entry():
    from service.auth import KeyRing

    result = _run("hash-key", "alice")
    assert result.exit_code == 0
    key = result.output.split("key:")[1].split()[0]
    entry = result.output.split("entry:")[1].split()[0]
    assert KeyRing.from_settings(entry, None).owner(f"Bearer {key}") == "alice"


def test_leakage_compares_both_methods(files, tiny_model_dir):
    import numpy as np

    mask = np.zeros((300, 300), dtype=np.uint8)
    mask[75:225, 75:225] = 255
    Image.fromarray(mask).save(files / "mask.png")
    result = _run(
        "leakage", "--structure", str(files / "cat.png"), "--appearance", str(files / "cup.jpg"),
        "--structure-mask", str(files / "mask.png"), "--appearance-mask", str(files / "mask.png"),
        "--model", tiny_model_dir, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["qalign", "cross_image"]
    assert all(0.0 <= float(line.split()[2]) <= 1.0 for line in lines)


def test_output_paths_for_one_or_several_appearances(tmp_path):
    from qalign_cli.main import output_paths

    out = tmp_path / "out.png"
    assert output_paths(out, 1, "png") == [out]  # one appearance: --output as given
    assert output_paths(out, 3, "png") == [tmp_path / f"out-{k}.png" for k in range(3)]
    assert output_paths(tmp_path / "look", 2, "png") == [tmp_path / "look-0.png", tmp_path / "look-1.png"]
    assert output_paths(tmp_path, 2, "jpeg") == [tmp_path / "qalign-0.jpg", tmp_path / "qalign-1.jpg"]
    assert output_paths(tmp_path, 1, "webp") == [tmp_path / "qalign.webp"]
    assert list(tmp_path.iterdir()) == []  # naming creates nothing


@pytest.mark.parametrize(
    "appearances,extra,fragment",
    [
        (9, [], "--appearance: 1 to 8 images per run; got 9"),
        (1, ["--aspect", "wide"], "'wide' is not one of 'structure', 'square'"),
    ],
)
def test_bad_appearances_and_aspect_are_one_clear_line(files, tiny_model_dir, appearances, extra, fragment):
    args = ["transfer", "--structure", str(files / "cat.png"), "--output", str(files / "o.png")]
    args += ["--model", tiny_model_dir, *extra]
    for _ in range(appearances):
        args += ["--appearance", str(files / "cup.jpg")]
    result = _run(*args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert fragment in lines[-1], result.stderr
    assert "Traceback" not in result.output
    if appearances == 9:
        assert len(lines) == 1 and lines[0].startswith("qalign: error: ")


def test_several_appearances_locally_give_one_file_each(files, tiny_model_dir, tmp_path):
    from qalign_core.pipeline import QAlignPipeline

    with Image.open(files / "cup.jpg") as cup:
        cup.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirrored.png")
    result = _run(
        "transfer", "--structure", str(files / "cat.png"), "--appearance", str(files / "cup.jpg"),
        "--appearance", str(tmp_path / "mirrored.png"), "--output", str(tmp_path / "look.png"),
        "--model", tiny_model_dir, "--save-masks", str(tmp_path / "masks"), *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = [tmp_path / "look-0.png", tmp_path / "look-1.png"]
    assert f"wrote 2 results: {written[0]}, {written[1]} (128x85, " in result.output
    assert not (tmp_path / "look.png").exists()
    images = [np.asarray(Image.open(path)) for path in written]
    assert images[0].shape == images[1].shape == (85, 128, 3) and not np.array_equal(*images)
    masks = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert masks == ["mask_appearance-0.png", "mask_appearance-1.png", "mask_structure.png"]

    # Image k is the single-pair transfer with appearance k: the library holds the latents to 1e-5
    # (batch invariance); after decoding and 8-bit rounding a pixel may differ by one level.
    pipe = QAlignPipeline.from_pretrained(tiny_model_dir, device="cpu")
    alone = pipe.transfer(files / "cat.png", tmp_path / "mirrored.png", TransferParams(steps=10))
    difference = np.abs(np.asarray(alone.image).astype(int) - images[1].astype(int))
    assert difference.max() <= 1

    square = _run(
        "transfer", "--structure", str(files / "cat.png"), "--appearance", str(files / "cup.jpg"),
        "--output", str(tmp_path), "--aspect", "square", "--model", tiny_model_dir, *FAST,
    )  # fmt: skip
    assert square.exit_code == 0, square.output
    with Image.open(tmp_path / "qalign.png") as image:
        assert image.size == (128, 128)
