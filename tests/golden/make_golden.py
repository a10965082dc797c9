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

The ``nonsquare`` part goes past what CIA's code can run, for a non-square latent (48 x 32, a 3:2
portrait at 384 x 256 px). It changes CIA's code in exactly these places, by substituting text in
the source of CIA's modules as loaded from the checkout (``patched_module``), never by copying it:
- CIA's two layer tests in ``utils/attention_utils.py: should_mix_keys_and_values``,
  ``hidden_states.shape[1] == 32 ** 2`` and ``== 64 ** 2``, become the token counts of the latent's
  second grid (h/2 x w/2) and finest grid (h x w): the non-square generalisation is the project's;
- CIA's inversion sizes its noise buffers ``(T, C, sample_size, sample_size)`` in
  ``utils/ddpm_inversion.py`` (twice): they take the latent's own (h, w) instead;
- the photos are cover-cropped around their centre to 2:3 and resized bicubic to 256 x 384 in
  place of ``image_utils.load_images`` (which crops to a 512 px square);
- for ``method=qalign``, ``attention_utils.compute_scaled_dot_product_attention`` is wrapped: on
  the calls where CIA gave row OUT the appearance's keys and values, they are first rearranged by
  Q-Align's query-query mapping (``qalign_mixing``, written here from the method's definition).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Iterator
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
    parser.add_argument(
        "--nonsquare-out", type=Path, default=HERE / "data" / "cia_golden_nonsquare.safetensors"
    )
    parser.add_argument(
        "--parts", default="freeu,segmentation,pipeline", help="which goldens to write (also: nonsquare)"
    )
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
    if "pipeline" in parts:
        pipeline_golden(args, cia)
    if "nonsquare" in parts:  # last: it patches CIA's modules (and restores them)
        nonsquare_golden(args, cia)


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
    metadata = {
        "cia_commit": cia_commit(args),
        "seed": str(cfg.seed),
        "prompt": cfg.prompt,
        "steps": str(cfg.num_timesteps),
        "adain": "masked" if cfg.use_masked_adain else "plain",
        "skip_steps": str(skip),
        "trajectory_steps": json.dumps(TRAJECTORY_STEPS),
        "prepared_pixels_sha256": json.dumps(prepared),
        "versions": versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


def cia_commit(args: argparse.Namespace) -> str:
    commit = (
        args.cia_commit
        or subprocess.run(
            ["git", "-C", str(args.cia), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    return commit or "unknown (not a git checkout)"


def versions() -> str:
    modules = ("torch", "diffusers", "transformers", "sklearn", "numpy")
    return json.dumps({m: sys.modules[m].__version__ for m in modules})


# ------------------------------------------------------------------------------------ nonsquare
#: The non-square latent: h x w = 48 x 32, a 3:2 portrait (384 x 256 px at the VAE's factor 8).
NONSQUARE_GRID = (48, 32)
#: CIA's layer tests, and what replaces them: the latent's finest grid and the one below it.
#: Each entry: text in CIA's source -> (its replacement, how often it occurs there).
LAYER_TESTS = {
    "hidden_states.shape[1] == 32 ** 2": ("hidden_states.shape[1] == SECOND_GRID_TOKENS", 1),
    "hidden_states.shape[1] == 64 ** 2": ("hidden_states.shape[1] == FINEST_GRID_TOKENS", 1),
}
#: CIA's inversion buffers are sized from the UNet's (square) sample size (in ``sample_xts_from_x0``
#: and ``inversion_forward_process``); the latent's own grid instead.
INVERSION_SHAPES = {
    "model.unet.sample_size,\n        model.unet.sample_size)": ("x0.shape[-2],\n        x0.shape[-1])", 2),
}


@contextlib.contextmanager
def patched_module(
    module: types.ModuleType, replacements: dict[str, tuple[str, int]], **names
) -> Iterator[None]:
    """Re-execute ``module``'s own source, with ``replacements`` substituted (each found exactly as
    often as stated), into the module's namespace (plus ``names``); the originals come back after.

    Executing into the module itself keeps every caller, including those that imported a function
    by name (its globals are the module's), on the patched code.
    """
    source = Path(module.__file__).read_text()
    for old, (new, occurrences) in replacements.items():
        if source.count(old) != occurrences:
            raise RuntimeError(f"{module.__name__}: expected {old!r} {occurrences} time(s) in CIA's code")
        source = source.replace(old, new)
    saved = dict(module.__dict__)
    module.__dict__.update(names)
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - CIA's own source
    try:
        yield
    finally:
        module.__dict__.clear()
        module.__dict__.update(saved)


def cover_crop_pixels(path: Path, width: int, height: int) -> np.ndarray:
    """The largest centred ``width:height`` region of the photo, resized bicubic to width x height."""
    image = Image.open(path).convert("RGB")
    if image.width * height > image.height * width:  # wider than the target: crop the sides
        crop_w, crop_h = round(image.height * width / height), image.height
    else:
        crop_w, crop_h = image.width, round(image.width * height / width)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


def qalign_mixing(original, calls: Counter):
    """CIA's attention with Q-Align's key-value rearrangement on row OUT's appearance calls.

    Q-Align (arXiv 2508.21090), plain and materialised: for every OUT query i, the appearance token
    ``pi(i) = argmax_j cos(q_out_i, q_app_j)`` over the full query vector (heads concatenated; ties
    to the lowest j, as ``torch.argmax`` returns the first maximum), then row OUT attends to
    ``k_app[pi], v_app[pi]`` with CIA's softmax and contrast. Structure injection (row OUT given the
    structure's keys and values) and every other row are left to CIA's code untouched.
    """
    out, app, struct = 0, 1, 2  # CIA's constants.py: OUT_INDEX, STYLE_INDEX, STRUCT_INDEX

    def attention(Q, K, V, edit_map=False, is_cross=False, contrast_strength=1.0):
        if edit_map and not is_cross:
            tokens = Q.shape[2]
            if torch.equal(K[out], K[app]) and torch.equal(V[out], V[app]):
                q_out = Q[out].transpose(0, 1).reshape(tokens, -1)  # [tokens, heads * d]
                q_app = Q[app].transpose(0, 1).reshape(tokens, -1)
                unit_out = q_out / q_out.norm(dim=-1, keepdim=True)
                unit_app = q_app / q_app.norm(dim=-1, keepdim=True)
                mapping = (unit_out @ unit_app.T).argmax(dim=-1)
                K, V = K.clone(), V.clone()
                K[out], V[out] = K[app][:, mapping], V[app][:, mapping]
                calls[f"aligned@{tokens}"] += 1
            elif torch.equal(K[out], K[struct]) and torch.equal(V[out], V[struct]):
                calls[f"injected@{tokens}"] += 1
            else:
                raise RuntimeError("a mixed call whose row OUT has neither APP's nor STRUCT's keys")
        return original(Q, K, V, edit_map=edit_map, is_cross=is_cross, contrast_strength=contrast_strength)

    return attention


def counting_mixing(original, calls: Counter):
    """CIA's own attention, counting its mixed calls by token count (which grids mixed)."""

    def attention(Q, K, V, edit_map=False, is_cross=False, contrast_strength=1.0):
        if edit_map and not is_cross:
            kind = "injected" if torch.equal(K[0], K[2]) else "aligned"
            calls[f"{kind}@{Q.shape[2]}"] += 1
        return original(Q, K, V, edit_map=edit_map, is_cross=is_cross, contrast_strength=contrast_strength)

    return attention


def nonsquare_golden(args: argparse.Namespace, cia: types.SimpleNamespace) -> None:
    """CIA's inversion and denoising on a 48 x 32 latent: ``cross_image`` and Q-Align finals."""
    import utils.attention_utils as cia_attention
    import utils.image_utils as cia_images

    h, w = NONSQUARE_GRID
    width, height = w * 8, h * 8
    model_dir = str(args.model.resolve())
    pipe = cia.Pipeline.from_pretrained(model_dir, safety_checker=None)
    pipe.unet = cia.UNet.from_pretrained(model_dir, subfolder="unet")
    pipe.scheduler = cia.Scheduler.from_config(model_dir, subfolder="scheduler")
    pixels = {n: cover_crop_pixels(getattr(args, n), width, height) for n in ("structure", "appearance")}
    grids = {"FINEST_GRID_TOKENS": h * w, "SECOND_GRID_TOKENS": (h // 2) * (w // 2)}

    sampled: list[torch.Tensor] = []
    timings: dict[str, float] = {}
    calls: dict[str, Counter] = {}
    finals: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as out, contextlib.ExitStack() as patches:
        patches.enter_context(patched_module(cia.inversion, INVERSION_SHAPES))
        patches.enter_context(patched_module(cia_attention, LAYER_TESTS, **grids))
        original_sample = cia.inversion.sample_xts_from_x0

        def recording_sample(*a, **k):
            xts = original_sample(*a, **k)
            sampled.append(xts.clone())
            return xts

        cia.inversion.sample_xts_from_x0 = recording_sample
        # CIA's load_images crops to a 512 px square: the non-square photos instead.
        patches.callback(setattr, cia_images, "load_images", cia_images.load_images)
        cia_images.load_images = lambda cfg, save_path=None: (pixels["appearance"], pixels["structure"])

        def config():
            return cia.RunConfig(
                app_image_path=args.appearance,
                struct_image_path=args.structure,
                domain_name="object",
                output_path=Path(out),
                seed=args.seed,
                load_latents=False,
                use_masked_adain=False,  # as the pipeline part: no object on random weights
            )

        cfg = config()
        started = time.perf_counter()
        cia.set_seed(cfg.seed)
        model = cia.Model(cfg, pipe=pipe)
        inverted = cia.load_or_invert(model=model, cfg=cfg)
        latents_app, latents_struct, noise_app, noise_struct = inverted
        timings["inversion_s"] = time.perf_counter() - started
        if latents_app.shape[-2:] != (h, w):
            raise RuntimeError(f"CIA's inversion gave latents {tuple(latents_app.shape)}, not {h} x {w}")

        original_attention = cia_attention.compute_scaled_dot_product_attention
        for method, wrap in (("cross_image", counting_mixing), ("qalign", qalign_mixing)):
            started = time.perf_counter()
            calls[method] = Counter()
            cia_attention.compute_scaled_dot_product_attention = wrap(original_attention, calls[method])
            cfg = config()
            cia.set_seed(cfg.seed)
            model = cia.Model(cfg, pipe=pipe)  # a fresh model per run, as run.py's run() does
            model.set_latents(latents_app, latents_struct)
            model.set_noise(noise_app, noise_struct)
            final: list[torch.Tensor] = []
            adain_callback = model.get_adain_callback()

            def recording_callback(step, timestep, latents, adain_callback=adain_callback, final=final):
                adain_callback(step, timestep, latents)
                final[:] = [latents.clone()]

            model.get_adain_callback = lambda recording_callback=recording_callback: recording_callback
            cia.run.run_appearance_transfer(model=model, cfg=cfg)
            finals[method] = final[0][0]
            timings[f"{method}_s"] = time.perf_counter() - started
            print(f"{method}: {time.perf_counter() - started:.0f} s, mixed calls {dict(calls[method])}")

    skip = cfg.skip_steps
    xts_app, xts_struct = sampled  # CIA inverts the appearance first
    tensors = {
        "app_start_latent": latents_app[skip].contiguous(),
        "struct_start_latent": latents_struct[skip].contiguous(),
        "app_noise_maps": noise_app[skip:].contiguous(),
        "struct_noise_maps": noise_struct[skip:].contiguous(),
        "app_trajectory": xts_app[list(TRAJECTORY_STEPS)].contiguous(),
        "struct_trajectory": xts_struct[list(TRAJECTORY_STEPS)].contiguous(),
        "final_cross_image": finals["cross_image"].contiguous(),
        "final_qalign": finals["qalign"].contiguous(),
    }
    metadata = {
        "cia_commit": cia_commit(args),
        "seed": str(cfg.seed),
        "prompt": cfg.prompt,
        "steps": str(cfg.num_timesteps),
        "adain": "plain",
        "skip_steps": str(skip),
        "contrast_strength": str(cfg.contrast_strength),
        "swap_guidance_scale": str(cfg.swap_guidance_scale),
        "grid": json.dumps({"height": h, "width": w, **grids}),
        "trajectory_steps": json.dumps(TRAJECTORY_STEPS),
        "inputs": (
            f"CIA's inversion (utils/ddpm_inversion.py: invert via latent_utils, appearance first, "
            f"global RNG after set_seed({cfg.seed})), its noise buffers sized by the latent's (h, w), "
            f"of the committed structure.png and appearance.png, each cover-cropped around its "
            f"centre to {w}:{h} and resized bicubic (PIL) to {width} x {height} px"
        ),
        "layer_tests": json.dumps({old: new for old, (new, _) in LAYER_TESTS.items()}),
        "mixed_calls": json.dumps({m: dict(c) for m, c in calls.items()}),
        "prepared_pixels_sha256": json.dumps(
            {n: hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest() for n, p in pixels.items()}
        ),
        "timings_s": json.dumps({k: round(v, 1) for k, v in timings.items()}),
        "versions": versions(),
    }
    args.nonsquare_out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.nonsquare_out), metadata=metadata)
    print(f"wrote {args.nonsquare_out} ({args.nonsquare_out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
