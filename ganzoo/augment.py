"""DiffAugment (Zhao, Liu, Lin, Zhu, Han 2020, "Differentiable Augmentation for Data-Efficient
GAN Training", arXiv:2006.10738): the same random, differentiable colour, translation and
cutout applied to real and generated images before D, in every D and G pass, so that D
cannot memorise a small training set and G still gets a gradient through the augmentation.
The ops follow the authors' DiffAugment_pytorch.py. Its `policy` picks the ops by group:
'color' (brightness, saturation, contrast), 'translation', 'cutout'; the authors train
StyleGAN2 and their low-shot runs with 'color,translation,cutout' (`diffaug` here), BigGAN on
CIFAR with 'translation,cutout' (DiffAugment-biggan-cifar/scripts/DiffAugment-biggan-cifar10*.sh).
`strength` scales each op (1: theirs, 0: the identity). Every draw comes from the run's own
random stream, which a checkpoint saves, so a resumed run draws the same augmentations."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def brightness(x, s=1.0):   # + U(-0.5, 0.5) per image
    return x + (torch.rand(len(x), 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5) * s


def saturation(x, s=1.0):   # the distance to the grey mean scaled by U(0, 2)
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (1 + (torch.rand(len(x), 1, 1, 1, dtype=x.dtype, device=x.device) * 2 - 1) * s) + m


def contrast(x, s=1.0):     # the distance to the image mean scaled by U(0.5, 1.5)
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * (1 + (torch.rand(len(x), 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5) * s) + m


def translation(x, s=1.0, ratio=0.125):
    """Shift each image by up to 1/8 of its side in x and y, filling with zeros."""
    B, _, H, W = x.shape
    sh, sw = int(H * ratio * s + 0.5), int(W * ratio * s + 0.5)
    ty = torch.randint(-sh, sh + 1, (B, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (B, 1, 1), device=x.device)
    b, gy, gx = torch.meshgrid(torch.arange(B, device=x.device), torch.arange(H, device=x.device),
                               torch.arange(W, device=x.device), indexing="ij")
    gy = torch.clamp(gy + ty + 1, 0, H + 1)
    gx = torch.clamp(gx + tx + 1, 0, W + 1)
    pad = F.pad(x, [1, 1, 1, 1])                                          # (B, C, H+2, W+2)
    return pad.permute(0, 2, 3, 1)[b, gy, gx].permute(0, 3, 1, 2)          # (B, C, H, W)


def cutout(x, s=1.0, ratio=0.5):
    """Zero a square of half the side at a random place in each image."""
    B, _, H, W = x.shape
    ch, cw = int(H * ratio * s + 0.5), int(W * ratio * s + 0.5)
    if ch == 0 or cw == 0:
        return x
    oy = torch.randint(0, H + (1 - ch % 2), (B, 1, 1), device=x.device)
    ox = torch.randint(0, W + (1 - cw % 2), (B, 1, 1), device=x.device)
    b, gy, gx = torch.meshgrid(torch.arange(B, device=x.device), torch.arange(ch, device=x.device),
                               torch.arange(cw, device=x.device), indexing="ij")
    gy = torch.clamp(gy + oy - ch // 2, 0, H - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, W - 1)
    mask = torch.ones(B, H, W, dtype=x.dtype, device=x.device)
    mask[b, gy, gx] = 0
    return x * mask.unsqueeze(1)


OPS = (brightness, saturation, contrast, translation, cutout)
GROUPS = {"color": (brightness, saturation, contrast), "translation": (translation,), "cutout": (cutout,)}
FULL = "color,translation,cutout"  # --augment diffaug


def parse_policy(text: str) -> str:
    """--augment's value: none, diffaug (the authors' full policy) or groups joined by commas
    ('translation,cutout'), each once; returned as the canonical policy ('' for none)."""
    text = text.strip().lower()
    if text in ("none", ""):
        return ""
    if text == "diffaug":
        return FULL
    groups = [g.strip() for g in text.split(",")]
    bad = [g for g in groups if g not in GROUPS]
    if bad or len(set(groups)) != len(groups):
        raise ValueError(f"{text!r}: give none, diffaug, or DiffAugment groups joined by commas, each once "
                         f"({', '.join(GROUPS)}), e.g. translation,cutout")
    return ",".join(g for g in GROUPS if g in groups)  # the authors' order: colour, translation, cutout


@functools.lru_cache(maxsize=None)
def policy_ops(policy: str) -> tuple:
    """The ops of a policy as parse_policy() reads it, in order; read once per spelling, not on
    every D and G pass."""
    groups = parse_policy(policy)
    return tuple(op for g in (groups.split(",") if groups else ()) for op in GROUPS[g])


def diffaug(x: torch.Tensor, strength: float = 1.0, policy: str = FULL, p: float = 1.0) -> torch.Tensor:
    """The policy's ops in the authors' order (colour, then translation, then cutout),
    (B, C, H, W) -> (B, C, H, W), differentiable. p < 1 augments each image with probability
    p and passes the others through (StyleGAN2-ADA's --p, drawn per image; lightweight-gan's
    --aug-prob draws one coin per batch); p = 1, the DiffAugment authors' setting, draws no coin."""
    y = x
    for op in policy_ops(policy):
        y = op(y, strength)
    if p >= 1.0:
        return y
    keep = torch.rand(len(x), 1, 1, 1, device=x.device) >= p   # (B, 1, 1, 1): True = not augmented
    return torch.where(keep, x, y)
