"""Attention processors that put the aligned layer inside a diffusers UNet.

Installed with ``unet.set_attn_processor``; no UNet code is forked. One small class per behaviour:
``QAlignAttnProcessor`` and ``CrossImageAttnProcessor`` differ only in how row OUT reads the
appearance row. Both read a shared ``AlignmentState`` that the pipeline advances step by step.

Batch layout while denoising: row 0 OUT (aligned), row 1 APP, row 2 STRUCT, and optionally row 3,
OUT again, which runs plain attention (the no-swap pass of swap guidance). Every row but OUT runs
plain self-attention, so APP and STRUCT are evaluated once per step for both passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qalign_core.attention import attention_leakage, cross_image_attention, qalign_attention

OUT, APP, STRUCT = 0, 1, 2
StepRange = tuple[int, int]


@dataclass(frozen=True)
class AlignmentSchedule:
    """Where and when row OUT is aligned; defaults follow Cross-Image Attention (see docs/algorithm.md)."""

    #: [start, end) step ranges by grid level: 0 = finest token grid (64x64 for SD 1.5), 1 = next (32x32).
    ranges: tuple[StepRange, ...] = ((10, 90), (10, 70))
    #: Structure injection on aligned steps with ``step % every == 0 and step < before``.
    injection_every: int = 5
    injection_before: int = 40

    def mode(self, level: int, step: int) -> str | None:
        """``"align"``, ``"inject"`` (OUT takes STRUCT's keys/values) or None (plain) for one layer call."""
        if level >= len(self.ranges):
            return None
        start, end = self.ranges[level]
        if not start <= step < end:
            return None
        if self.injection_every and step % self.injection_every == 0 and step < self.injection_before:
            return "inject"
        return "align"

    def any_aligned(self, step: int) -> bool:
        return any(start <= step < end for start, end in self.ranges)


@dataclass
class AlignmentState:
    """Per-run state shared by all processors of one UNet.

    ``step is None`` turns alignment off (inversion, plain reconstruction). ``latent_tokens`` is the
    token count of the finest grid, which tells a layer call its grid level from its own token count.
    ``log`` records every (layer, step, mode) that changed row OUT, for tests and diagnostics.
    """

    schedule: AlignmentSchedule = field(default_factory=AlignmentSchedule)
    contrast_strength: float = 1.0
    per_head: bool = False
    chunk_size: int | None = None
    step: int | None = None
    latent_tokens: int = 0
    log: list[tuple[str, int, str]] = field(default_factory=list)
    #: Object masks ``[side, side]`` (structure, appearance) in [0, 1]; when set, every aligned call
    #: records its attention leakage in ``leakage`` as (layer, step, value). A diagnostic: it costs
    #: one materialised attention map of the object queries per aligned call.
    leakage_masks: tuple[torch.Tensor, torch.Tensor] | None = None
    leakage: list[tuple[str, int, float]] = field(default_factory=list)

    def masks_at(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The object masks at a layer's square token grid, flattened to booleans ``[tokens]``."""
        side = int(round(tokens**0.5))
        return tuple(
            F.interpolate(mask[None, None].float(), size=(side, side), mode="area").flatten() > 0.5
            for mask in self.leakage_masks
        )

    def mode_for(self, layer: str, tokens: int) -> str | None:
        if self.step is None or tokens == 0 or self.latent_tokens % tokens:
            return None
        ratio = self.latent_tokens // tokens  # 1 on the finest grid, 4 one level down, 16 below
        level = (ratio.bit_length() - 1) // 2 if ratio & (ratio - 1) == 0 else None
        mode = None if level is None else self.schedule.mode(level, self.step)
        if mode is not None:
            self.log.append((layer, self.step, mode))
        return mode


class _RowOutProcessor:
    """Self-attention where every row runs plain attention except row OUT on aligned calls."""

    method: str = ""

    def __init__(self, layer: str, state: AlignmentState) -> None:
        self.layer = layer
        self.state = state

    def attend_appearance(self, q_out, q_app, k_app, v_app) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
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
            q, k = attn.norm_q(q), attn.norm_k(k)

        mode = self.state.mode_for(self.layer, tokens) if batch > STRUCT else None
        if mode is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            if mode == "inject":
                row_out = F.scaled_dot_product_attention(q[OUT], k[STRUCT], v[STRUCT])
            else:
                row_out = self.attend_appearance(q[OUT], q[APP], k[APP], v[APP])
                if self.state.leakage_masks is not None:
                    self._record_leakage(q, k, tokens)
            out = torch.cat([row_out.unsqueeze(0), F.scaled_dot_product_attention(q[1:], k[1:], v[1:])])

        hidden_states = out.transpose(1, 2).reshape(batch, tokens, -1).to(q.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _record_leakage(self, q: torch.Tensor, k: torch.Tensor, tokens: int) -> None:
        structure_mask, appearance_mask = self.state.masks_at(tokens)
        if not structure_mask.any():
            return
        value = attention_leakage(
            q[OUT], q[APP], k[APP], structure_mask.to(q.device), appearance_mask.to(q.device),
            method=self.method, contrast_strength=self.state.contrast_strength, per_head=self.state.per_head,
        )  # fmt: skip
        self.state.leakage.append((self.layer, self.state.step, value))


class QAlignAttnProcessor(_RowOutProcessor):
    """Row OUT: query-query alignment, key-value rearrangement, attention refinement."""

    method = "qalign"

    def attend_appearance(self, q_out, q_app, k_app, v_app) -> torch.Tensor:
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

    def attend_appearance(self, q_out, q_app, k_app, v_app) -> torch.Tensor:
        s = self.state
        return cross_image_attention(
            q_out, k_app, v_app, contrast_strength=s.contrast_strength, chunk_size=s.chunk_size
        )


PROCESSORS: dict[str, type[_RowOutProcessor]] = {
    "qalign": QAlignAttnProcessor,
    "cross_image": CrossImageAttnProcessor,
}


def is_decoder_self_attention(name: str) -> bool:
    """Self-attention ("attn1") layers of the UNet decoder, the only ones alignment may touch."""
    return name.startswith("up_blocks.") and ".attn1." in name


def install_processors(unet, method: str, state: AlignmentState) -> None:
    """Set the method's processor on decoder self-attention layers and plain SDPA everywhere else.

    The processor of each layer decides per call (from its token count and the step) whether to
    align, so layers at coarser grids stay plain without needing a different class.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    cls = PROCESSORS[method]
    processors = {}
    for name in unet.attn_processors:
        layer = name.removesuffix(".processor")
        processors[name] = cls(layer, state) if is_decoder_self_attention(name) else AttnProcessor2_0()
    unet.set_attn_processor(processors)
