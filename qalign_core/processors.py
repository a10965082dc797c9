"""Attention processors that put the aligned layer inside a diffusers UNet.

Installed with ``unet.set_attn_processor``; no UNet code is forked. One small class per behaviour:
``QAlignAttnProcessor`` and ``CrossImageAttnProcessor`` differ only in how row OUT reads the
appearance row. Both read a shared ``AlignmentState`` that the pipeline advances step by step.

Batch layout while denoising m (structure, appearance) pairs that share one structure (``RowLayout``):
rows ``[OUT_1..OUT_m]`` (aligned), ``[APP_1..APP_m]``, one ``STRUCT``, and optionally ``[OUT_1..OUT_m]``
again, which run plain attention (the no-swap pass of swap guidance): 3m+1 rows. Every row but the
aligned OUT rows runs plain self-attention, so APP and STRUCT are evaluated once per step for both
passes, and the structure once for all pairs. For m = 1 this is [OUT, APP, STRUCT, OUT].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from qalign_core.attention import (
    attention_leakage,
    contrast_attention,
    cross_image_attention,
    qalign_attention,
)
from qalign_core.schedule import DenoiseSchedule
from qalign_core.segmentation import AttentionCapture

if TYPE_CHECKING:
    # diffusers' top-level names resolve to placeholder classes for type checkers: import the modules.
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

#: Row indices of the single-pair layout, ``RowLayout(1)``: [OUT, APP, STRUCT, OUT (plain)].
OUT, APP, STRUCT = 0, 1, 2


@dataclass(frozen=True)
class RowLayout:
    """Where each role's rows sit in a denoising batch of ``pairs`` pairs sharing one structure."""

    pairs: int = 1

    @property
    def out(self) -> slice:
        return slice(0, self.pairs)

    @property
    def app(self) -> slice:
        return slice(self.pairs, 2 * self.pairs)

    @property
    def struct(self) -> int:
        return 2 * self.pairs

    @property
    def mixed_rows(self) -> int:
        """Rows of the swap pass: OUT, APP and STRUCT (the plain OUT rows come after)."""
        return 2 * self.pairs + 1

    @property
    def app_and_struct(self) -> slice:
        """The rows masked AdaIN's segmentation reads: every APP, then STRUCT."""
        return slice(self.pairs, 2 * self.pairs + 1)


@dataclass
class AlignmentState:
    """Per-run state shared by all processors of one UNet.

    ``iteration is None`` turns alignment off (inversion, plain reconstruction). ``grid`` is the
    latent's (h, w); its token count tells a layer call its grid level from its own token count
    (each level down has a quarter of the tokens, whatever the aspect ratio). ``log`` records every
    (layer, iteration, mode) that changed the OUT rows, for tests and diagnostics.
    """

    schedule: DenoiseSchedule | None = None
    rows: RowLayout = field(default_factory=RowLayout)
    contrast_strength: float = 1.0
    per_head: bool = False
    chunk_size: int | None = None
    iteration: int | None = None
    grid: tuple[int, int] = (0, 0)
    log: list[tuple[str, int, str]] = field(default_factory=list)
    #: Queries and keys of rows APP and STRUCT for masked AdaIN's self-segmentation.
    capture: AttentionCapture = field(default_factory=AttentionCapture)
    #: Object masks ``[H, W]`` in pixels (structure, appearance) in [0, 1]; when set, every aligned
    #: call records the first pair's attention leakage in ``leakage`` as (layer, iteration, value).
    #: A diagnostic: it costs one materialised attention map of the object queries per aligned call.
    leakage_masks: tuple[torch.Tensor, torch.Tensor] | None = None
    leakage: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def latent_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def masks_at(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The object masks at a layer's token grid, flattened to booleans ``[tokens]``."""
        if self.leakage_masks is None:
            raise ValueError("no object masks were given")
        factor = math.isqrt(self.latent_tokens // tokens)  # 1, 2, 4, ... by grid level
        size = (self.grid[0] // factor, self.grid[1] // factor)

        def at_grid(mask: torch.Tensor) -> torch.Tensor:
            return F.interpolate(mask[None, None].float(), size=size, mode="area").flatten() > 0.5

        structure, appearance = self.leakage_masks
        return at_grid(structure), at_grid(appearance)

    def mode_for(self, layer: str, tokens: int) -> str | None:
        if self.iteration is None or self.schedule is None or tokens == 0 or self.latent_tokens % tokens:
            return None
        ratio = self.latent_tokens // tokens  # 1 on the finest grid, 4 one level down, 16 below
        level = (ratio.bit_length() - 1) // 2 if ratio & (ratio - 1) == 0 else None
        mode = None if level is None else self.schedule.mode(level, self.iteration)
        if mode is not None:
            self.log.append((layer, self.iteration, mode))
        return mode


class _RowOutProcessor:
    """Self-attention where every row runs plain attention except the OUT rows on mixed calls."""

    method: str = ""

    def __init__(self, layer: str, state: AlignmentState) -> None:
        self.layer = layer
        self.state = state

    def attend_appearance(
        self, q_out: torch.Tensor, q_app: torch.Tensor, k_app: torch.Tensor, v_app: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        heads = attn.heads
        q, k, v = (
            proj(hidden_states).view(batch, tokens, heads, -1).transpose(1, 2)
            for proj in (attn.to_q, attn.to_k, attn.to_v)
        )
        if attn.norm_q is not None:
            # diffusers' Attention declares norm_q and norm_k by their first assignment: None.
            q, k = attn.norm_q(q), attn.norm_k(k)  # type: ignore[misc]

        rows = self.state.rows
        denoising = batch > rows.struct
        if denoising:
            self.state.capture.record_self(self.layer, q[rows.app_and_struct], k[rows.app_and_struct])
        mode = self.state.mode_for(self.layer, tokens) if denoising else None
        if mode is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out_rows = [self._mixed_row(mode, q, k, v, pair) for pair in range(rows.pairs)]
            if mode == "align" and self.state.leakage_masks is not None:
                self._record_leakage(q, k, tokens)
            rest = slice(rows.pairs, batch)
            out = torch.cat([*out_rows, F.scaled_dot_product_attention(q[rest], k[rest], v[rest])])

        hidden_states = out.transpose(1, 2).reshape(batch, tokens, -1).to(q.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _mixed_row(
        self, mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pair: int
    ) -> torch.Tensor:
        """Row OUT of one pair on a mixed call, ``[1, heads, tokens, d]``.

        One pair at a time, so every pair's arithmetic is that of a single-pair run (batch invariance).
        """
        out, app, struct = pair, self.state.rows.app.start + pair, self.state.rows.struct
        if mode == "inject":  # CIA applies its contrast on every mixed call, injection included
            row = contrast_attention(
                q[out], k[struct], v[struct],
                contrast_strength=self.state.contrast_strength, chunk_size=self.state.chunk_size,
            )  # fmt: skip
        else:
            row = self.attend_appearance(q[out], q[app], k[app], v[app])
        return row.unsqueeze(0)

    def _record_leakage(self, q: torch.Tensor, k: torch.Tensor, tokens: int) -> None:
        iteration = self.state.iteration
        assert iteration is not None, "layers align only while denoising"
        structure_mask, appearance_mask = self.state.masks_at(tokens)
        if not structure_mask.any():
            return
        out, app = 0, self.state.rows.app.start  # the first pair
        value = attention_leakage(
            q[out], q[app], k[app], structure_mask.to(q.device), appearance_mask.to(q.device),
            method=self.method, contrast_strength=self.state.contrast_strength, per_head=self.state.per_head,
        )  # fmt: skip
        self.state.leakage.append((self.layer, iteration, value))


class QAlignAttnProcessor(_RowOutProcessor):
    """Row OUT: query-query alignment, key-value rearrangement, attention refinement."""

    method = "qalign"

    def attend_appearance(
        self, q_out: torch.Tensor, q_app: torch.Tensor, k_app: torch.Tensor, v_app: torch.Tensor
    ) -> torch.Tensor:
        s = self.state
        return qalign_attention(
            q_out,
            q_app,
            k_app,
            v_app,
            contrast_strength=s.contrast_strength,
            per_head=s.per_head,
            chunk_size=s.chunk_size,
        )


class CrossImageAttnProcessor(_RowOutProcessor):
    """Row OUT: Cross-Image Attention, output queries over the appearance keys and values."""

    method = "cross_image"

    def attend_appearance(
        self, q_out: torch.Tensor, q_app: torch.Tensor, k_app: torch.Tensor, v_app: torch.Tensor
    ) -> torch.Tensor:
        s = self.state
        return cross_image_attention(
            q_out, k_app, v_app, contrast_strength=s.contrast_strength, chunk_size=s.chunk_size
        )


class CaptureCrossAttnProcessor:
    """Plain cross-attention that hands the APP and STRUCT rows' queries and keys to the capture.

    Masked AdaIN scores segments by the object noun's cross-attention; the capture keeps them only
    while it is active (one iteration per run).
    """

    def __init__(self, layer: str, state: AlignmentState) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.layer, self.state, self.plain = layer, state, AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kw: object,
    ) -> torch.Tensor:
        capture, layout = self.state.capture, self.state.rows
        if (
            encoder_hidden_states is not None
            and hidden_states.shape[0] > layout.struct
            and capture.wants_cross(hidden_states.shape[1])  # project only the layer kept
        ):
            rows = layout.app_and_struct
            q = attn.to_q(hidden_states[rows])
            k = attn.to_k(encoder_hidden_states[rows])
            batch, heads = q.shape[0], attn.heads
            capture.record_cross(
                self.layer,
                q.view(batch, -1, heads, q.shape[-1] // heads).transpose(1, 2),
                k.view(batch, -1, heads, k.shape[-1] // heads).transpose(1, 2),
            )
        return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)


PROCESSORS: dict[str, type[_RowOutProcessor]] = {
    "qalign": QAlignAttnProcessor,
    "cross_image": CrossImageAttnProcessor,
}


def is_decoder_self_attention(name: str) -> bool:
    """Self-attention ("attn1") layers of the UNet decoder, the only ones alignment may touch."""
    return name.startswith("up_blocks.") and ".attn1." in name


def is_decoder_cross_attention(name: str) -> bool:
    return name.startswith("up_blocks.") and ".attn2." in name


def install_processors(unet: UNet2DConditionModel, method: str, state: AlignmentState) -> None:
    """Set the method's processor on decoder self-attention layers and plain SDPA everywhere else.

    The processor of each layer decides per call (from its token count and the step) whether to
    align, so layers at coarser grids stay plain without needing a different class.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    cls = PROCESSORS[method]
    processors: dict[str, _RowOutProcessor | CaptureCrossAttnProcessor | AttnProcessor2_0] = {}
    for name in unet.attn_processors:
        layer = name.removesuffix(".processor")
        if is_decoder_self_attention(name):
            processors[name] = cls(layer, state)
        elif is_decoder_cross_attention(name):
            processors[name] = CaptureCrossAttnProcessor(layer, state)
        else:
            processors[name] = AttnProcessor2_0()
    # diffusers types processors as a closed union of its own classes; any callable with their
    # signature is accepted.
    unet.set_attn_processor(processors)  # type: ignore[arg-type]
