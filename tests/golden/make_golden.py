"""Generate the golden tensors of Cross-Image Attention's published code, run as published.

Not part of the project and never imported by it: it runs CIA's own modules from a checkout of
github.com/garibida/cross-image-attention (MIT) in an environment with CIA's requirements, on the
committed golden model (``tests/golden/data/model``, a tiny random-weight SD-shaped model with
64 x 64 latents), and writes what the equivalence test compares against. How to regenerate:
``tests/golden/README.md``.

Only what a CPU-only, offline machine needs is adapted, around CIA's code and not inside it:
- ``cuda`` devices and generators are mapped to the CPU;
- ``nltk`` cannot download its tagger data offline, so a stand-in tags the words of the default
  prompt as the Penn tagger does ("photo" and "object" are nouns);
- the model comes from the golden directory instead of the hub (CIA's ``get_stable_diffusion_model``
  with the path replaced: the same pipeline, FreeU UNet and DDIM scheduler classes).
Instrumentation only records values: the noisy trajectory as sampled (before CIA's in-place
correction), the object masks, and the latents after each step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
#: Steps of the sampled trajectory stored for the inversion check: each i with i + 1, and x_0.
TRAJECTORY_STEPS = (32, 33, 60, 61, 98, 99, 100)


def install_offline_stand_ins() -> None:
    """CPU for ``cuda``; a fixed-lexicon ``nltk`` (its data downloads need the network)."""
    original_to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda" else a for a in args)
        if kwargs.get("device") == "cuda":
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu
    torch.Tensor.cuda = lambda self, *a, **k: self

    nouns = {"photo", "object", "image", "picture"}
    nltk = types.ModuleType("nltk")
    nltk.download = lambda *a, **k: True
    nltk.word_tokenize = lambda text: text.split()
    nltk.pos_tag = lambda words: [(w, "NN" if w.lower() in nouns else "DT") for w in words]
    sys.modules["nltk"] = nltk


def freeu_pairs(unet_class) -> dict[str, torch.Tensor]:
    """Inputs and outputs of CIA's FreeU at every decoder stage of a UNet with SD 1.5's widths.

    The golden model is too narrow for CIA's FreeU (it matches 1280 and 640 channels), so FreeU
    gets its own golden: a random UNet with SD 1.5's block widths but no attention blocks and an
    8 x 8 latent, run once through CIA's FreeU UNet forward. Each up block's input is recorded
    (after FreeU) next to what the stage below produced (before it).
    """
    torch.manual_seed(0)
    unet = unet_class(
        sample_size=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) * 4,
        layers_per_block=1,
        cross_attention_dim=32,
    ).eval()
    produced, received = [], []
    unet.mid_block.register_forward_hook(lambda m, a, out: produced.append(out.clone()))
    for block in unet.up_blocks:
        block.register_forward_hook(lambda m, a, out: produced.append(out.clone()))
        block.register_forward_pre_hook(
            lambda m, a, kw: received.append(kw["hidden_states"].clone()), with_kwargs=True
        )
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), 500, encoder_hidden_states=torch.randn(1, 77, 32))
    pairs = {}
    for stage, (before, after) in enumerate(zip(produced[: len(received)], received, strict=True)):
        pairs[f"freeu_in_{stage}"], pairs[f"freeu_out_{stage}"] = before.contiguous(), after.contiguous()
    return pairs


def segmentation_golden() -> dict[str, torch.Tensor]:
    """CIA's Segmentor and masked AdaIN on the synthetic attention of ``synthetic.py``."""
    sys.path.insert(0, str(HERE))
    import synthetic
    from utils.adain import masked_adain
    from utils.segmentation import Segmentor

    segmentor = Segmentor(prompt="A photo of a object", object_nouns=["object"])
    for side in (32, 64):  # CIA segments at both grids (and uses the 64 x 64 masks for AdaIN)
        qk = synthetic.rows_qk(side)
        segmentor.update_attention(synthetic.attention(qk["self_q"], qk["self_k"]), is_cross=False)
        segmentor.update_attention(synthetic.attention(qk["cross_q"], qk["cross_k"]), is_cross=True)
    _, _, mask_app_64, mask_struct_64 = segmentor.get_object_masks()
    out, app = synthetic.latents()
    return {
        "app_mask": mask_app_64.to(torch.uint8).contiguous(),
        "struct_mask": mask_struct_64.to(torch.uint8).contiguous(),
        "masked_adain": masked_adain(out, app, mask_struct_64, mask_app_64).contiguous(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cia", required=True, type=Path, help="checkout of garibida/cross-image-attention")
    parser.add_argument("--model", type=Path, default=HERE / "data" / "model")
    parser.add_argument("--structure", type=Path, default=HERE / "data" / "structure.png")
    parser.add_argument("--appearance", type=Path, default=HERE / "data" / "appearance.png")
    parser.add_argument("--out", type=Path, default=HERE / "data" / "cia_golden.safetensors")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--freeu-out", type=Path, default=HERE / "data" / "cia_freeu.safetensors")
    parser.add_argument(
        "--segmentation-out", type=Path, default=HERE / "data" / "cia_segmentation.safetensors"
    )
    parser.add_argument("--cia-commit", default="", help="CIA's commit, when --cia is no git checkout")
    parser.add_argument("--parts", default="freeu,segmentation,pipeline", help="which goldens to write")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    install_offline_stand_ins()
    sys.path.insert(0, str(args.cia.resolve()))
    import run as cia_run
    import utils.ddpm_inversion as cia_inversion
    from appearance_transfer_model import AppearanceTransferModel
    from config import RunConfig
    from diffusers import DDIMScheduler
    from diffusers.training_utils import set_seed
    from models.stable_diffusion import CrossImageAttentionStableDiffusionPipeline
    from models.unet_2d_condition import FreeUUNet2DConditionModel
    from utils.latent_utils import load_latents_or_invert_images

    cpu_generator = torch.Generator
    torch.Generator = lambda device="cpu": cpu_generator("cpu")  # after imports: only run.py calls it

    if "freeu" in parts:
        save_file(freeu_pairs(FreeUUNet2DConditionModel), str(args.freeu_out))
        print(f"wrote {args.freeu_out}")
    if "segmentation" in parts:
        save_file(segmentation_golden(), str(args.segmentation_out))
        print(f"wrote {args.segmentation_out}")
    if "pipeline" in parts:
        cia = types.SimpleNamespace(
            run=cia_run,
            inversion=cia_inversion,
            Model=AppearanceTransferModel,
            RunConfig=RunConfig,
            Pipeline=CrossImageAttentionStableDiffusionPipeline,
            UNet=FreeUUNet2DConditionModel,
            Scheduler=DDIMScheduler,
            set_seed=set_seed,
            load_or_invert=load_latents_or_invert_images,
        )
        pipeline_golden(args, cia)


def pipeline_golden(args: argparse.Namespace, cia: types.SimpleNamespace) -> None:
    """CIA's run.py on the golden model and photos, with plain AdaIN (see the note below)."""
    model_dir = str(args.model.resolve())
    pipe = cia.Pipeline.from_pretrained(model_dir, safety_checker=None)
    pipe.unet = cia.UNet.from_pretrained(model_dir, subfolder="unet")
    pipe.scheduler = cia.Scheduler.from_config(model_dir, subfolder="scheduler")

    sampled: list[torch.Tensor] = []
    original_sample = cia.inversion.sample_xts_from_x0

    def recording_sample(*a, **k):
        xts = original_sample(*a, **k)
        sampled.append(xts.clone())
        return xts

    cia.inversion.sample_xts_from_x0 = recording_sample

    with tempfile.TemporaryDirectory() as out:
        # Plain AdaIN: on random weights CIA's self-segmentation finds no object, and CIA's masked
        # AdaIN then divides by an empty mask (NaN). Masked AdaIN has its own golden (synthetic.py).
        cfg = cia.RunConfig(
            app_image_path=args.appearance,
            struct_image_path=args.structure,
            domain_name="object",
            output_path=Path(out),
            seed=args.seed,
            load_latents=False,
            use_masked_adain=False,
        )
        # run.py's run(), with the pipeline built above instead of one loaded from the hub.
        cia.set_seed(cfg.seed)
        model = cia.Model(cfg, pipe=pipe)
        inverted = cia.load_or_invert(model=model, cfg=cfg)
        latents_app, latents_struct, noise_app, noise_struct = inverted
        model.set_latents(latents_app, latents_struct)
        model.set_noise(noise_app, noise_struct)
        final: list[torch.Tensor] = []
        adain_callback = model.get_adain_callback()

        def recording_callback(step, timestep, latents):
            adain_callback(step, timestep, latents)
            final[:] = [latents.clone()]

        model.get_adain_callback = lambda: recording_callback
        cia.run.run_appearance_transfer(model=model, cfg=cfg)
        prepared = {
            name: hashlib.sha256(np.asarray(Image.open(cfg.output_path / f)).tobytes()).hexdigest()
            for name, f in (("structure", "in_struct.png"), ("appearance", "in_style.png"))
        }

    skip = cfg.skip_steps
    xts_app, xts_struct = sampled  # CIA inverts the appearance first
    tensors = {
        "app_start_latent": latents_app[skip].contiguous(),
        "struct_start_latent": latents_struct[skip].contiguous(),
        "app_noise_maps": noise_app[skip:].contiguous(),
        "struct_noise_maps": noise_struct[skip:].contiguous(),
        "app_trajectory": xts_app[list(TRAJECTORY_STEPS)].contiguous(),
        "struct_trajectory": xts_struct[list(TRAJECTORY_STEPS)].contiguous(),
        "final_latents": final[0].contiguous(),
    }
    cia_commit = (
        args.cia_commit
        or subprocess.run(
            ["git", "-C", str(args.cia), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    metadata = {
        "cia_commit": cia_commit or "unknown (not a git checkout)",
        "seed": str(cfg.seed),
        "prompt": cfg.prompt,
        "steps": str(cfg.num_timesteps),
        "adain": "masked" if cfg.use_masked_adain else "plain",
        "skip_steps": str(skip),
        "trajectory_steps": json.dumps(TRAJECTORY_STEPS),
        "prepared_pixels_sha256": json.dumps(prepared),
        "versions": json.dumps(
            {
                m: sys.modules[m].__version__
                for m in ("torch", "diffusers", "transformers", "sklearn", "numpy")
            }
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
