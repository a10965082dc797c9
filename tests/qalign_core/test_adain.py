"""AdaIN, plain and masked, with CIA's statistics (unbiased variance + 1e-5 under the root)."""

from __future__ import annotations

import torch

from qalign_core.adain import EPS, adain, masked_adain, mean_std


def _latents():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 8, 8, generator=g) * 2 + 1, torch.randn(4, 8, 8, generator=g) * 0.5 - 3


def test_plain_adain_takes_the_references_statistics():
    x, ref = _latents()
    out = adain(x, ref)
    mean, std = mean_std(out)
    ref_mean, ref_std = mean_std(ref)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, ref_std, rtol=1e-3, atol=1e-3)
    expected = (x - x.mean((1, 2), keepdim=True)) / (x.var((1, 2), keepdim=True) + EPS).sqrt()
    torch.testing.assert_close(out, expected * (ref.var((1, 2), keepdim=True) + EPS).sqrt() + ref_mean)


def test_masked_adain_changes_only_inside_the_mask_with_masked_statistics():
    x, ref = _latents()
    x_mask = torch.zeros(8, 8, dtype=torch.bool)
    x_mask[2:6, 2:6] = True
    ref_mask = torch.zeros(8, 8, dtype=torch.bool)
    ref_mask[:4] = True
    out = masked_adain(x, ref, x_mask, ref_mask)
    assert torch.equal(out[:, ~x_mask], x[:, ~x_mask])
    inside = out[:, x_mask]
    torch.testing.assert_close(inside.mean(1), ref[:, ref_mask].mean(1), rtol=1e-5, atol=1e-5)


def test_masked_adain_with_full_masks_is_plain_adain():
    x, ref = _latents()
    full = torch.ones(8, 8, dtype=torch.bool)
    torch.testing.assert_close(masked_adain(x, ref, full, full), adain(x, ref))
