"""Contrastive training of a CLIP from scratch (image and text towers), for the demo world: no
pretrained CLIP can be downloaded here, and ClipCap needs embeddings that carry the scene's meaning.

The loss is CLIP's: symmetric cross-entropy over the image-text similarity matrix of a batch, scaled
by the learned temperature. Each step pairs every image with one of its captions at random.

Contrastive learning only learns what tells the images of a batch apart, and in a random batch two
scenes rarely differ in position or shape alone. On the demo world, whose images record their
attributes, half of each batch is drawn in blocks of images that differ in one attribute only, images
alike in every attribute count as each other's positives, and an auxiliary loss classifies each
attribute from the image embedding: measured, contrastive learning alone left position at chance (a
linear probe on the image embedding found 25-34% for five places), while the auxiliary loss gets it
above 95% (docs/training.md). Small random translations make up for the small data set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm
from transformers import CLIPModel

from .data import Record
from .reference import load_image, preprocess
from .tokenizer import CLIP_EOS, clip_ids, clip_tokenizer, special_id
from .world import ATTRIBUTES


def pixel_tensor(records: list[Record], size: int) -> torch.Tensor:
    """Every record's image, preprocessed as OpenAI's CLIP does: [N, 3, size, size]."""
    return torch.stack([preprocess(load_image(r.path), size) for r in tqdm(records, desc="preprocess", leave=False)])


def caption_ids(tok: Tokenizer, records: list[Record]) -> list[list[list[int]]]:
    return [clip_ids(tok, r.captions) for r in records]


def _batch_ids(ids: list[list[int]], eos: int) -> torch.Tensor:
    # The text tower is causal and pools at end-of-text (`eos`), so cutting the padding after the
    # longest caption of the batch (instead of padding to 77) gives the same embeddings, faster.
    length = max(i.index(eos) + 1 for i in ids)
    return torch.tensor([i[:length] for i in ids])


@torch.no_grad()
def text_features(clip: CLIPModel, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """CLIP text embeddings (projected, not normalised) of `texts`: [texts, dim]."""
    tok = clip_tokenizer()
    eos = special_id(tok, CLIP_EOS)
    rows = [clip.get_text_features(input_ids=_batch_ids(clip_ids(tok, texts[i:i + batch_size]), eos)).pooler_output
            for i in range(0, len(texts), batch_size)]
    return torch.cat(rows).float().numpy()


def retrieval_accuracy(clip: CLIPModel, pixels: torch.Tensor, ids: list[list[list[int]]], eos: int) -> float:
    """Image-to-text top-1 accuracy among the first captions of the given images."""
    with torch.no_grad():
        img = F.normalize(clip.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt = F.normalize(clip.get_text_features(input_ids=_batch_ids([c[0] for c in ids], eos)).pooler_output, dim=-1)
    return float((img @ txt.T).argmax(1).eq(torch.arange(len(ids))).float().mean())


def _hard_pools(attributes: list[dict]) -> dict[str, list[list[int]]]:
    """For each attribute, groups of images alike in every other attribute but position (the hard
    negatives that teach it); groups where it takes a single value are left out. Position is left
    free except in its own pools: alike in position too, the groups would hold a handful of images
    (measured: shape zero-shot 86% that way, the hard blocks being too small)."""
    pools: dict[str, list[list[int]]] = {}
    for a in ATTRIBUTES:
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(attributes):
            if t[a] is None:
                continue  # position of several shapes
            rest = tuple(t[k] for k in ATTRIBUTES if k != a and k != "position")
            groups.setdefault(rest, []).append(i)
        pools[a] = [m for m in groups.values() if len({str(attributes[i][a]) for i in m}) > 1]
    return {a: p for a, p in pools.items() if p}


def _batches(n: int, batch_size: int, attributes: list[dict] | None, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of indices: random ones, or, with the images' attributes, half of each batch in
    8 blocks of images that differ in one attribute only (a different attribute for each block)."""
    pools = _hard_pools(attributes) if attributes else {}
    names = sorted(pools)
    while True:
        if not pools:
            yield rng.choice(n, batch_size, replace=False)
            continue
        hard: list[int] = []
        for _ in range(8):
            pool = pools[names[rng.integers(len(names))]]
            members = pool[rng.integers(len(pool))]
            hard += [int(i) for i in rng.choice(members, min(batch_size // 16, len(members)), replace=False)
                     if i not in hard]
        rest = rng.choice(np.setdiff1d(np.arange(n), hard), batch_size - len(hard), replace=False)
        yield np.concatenate([np.array(hard, dtype=int), rest])


def _targets(keys: torch.Tensor) -> torch.Tensor:
    """Contrastive targets: every pair of images with the same attributes (hence the same captions) is
    a positive pair, so twins in a batch are not pushed apart. Rows sum to 1."""
    same = (keys[:, None] == keys[None, :]).float()
    return same / same.sum(1, keepdim=True)


class AttributeHeads(nn.Module):
    """Linear classifiers of each attribute from the image embedding: an auxiliary loss during training
    only (they are not part of CLIP or the bundle)."""

    def __init__(self, dim: int, attributes: list[dict]) -> None:
        super().__init__()
        self.values = {a: sorted({str(t[a]) for t in attributes if t[a] is not None}) for a in ATTRIBUTES}
        self.heads = nn.ModuleDict({a: nn.Linear(dim, len(v)) for a, v in self.values.items()})
        self.labels = {a: torch.tensor([v.index(str(t[a])) if t[a] is not None else -100 for t in attributes])
                       for a, v in self.values.items()}

    def forward(self, embeds: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        return sum(F.cross_entropy(self.heads[a](embeds), self.labels[a][rows], ignore_index=-100) for a in self.heads)


def _shifted(pixels: torch.Tensor, shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Each image moved by up to `shift` pixels in x and y (wrapping round): augmentation that keeps
    shapes, counts and colours, and keeps positions on their side. Never a flip: left and right are
    what a caption says."""
    if not shift:
        return pixels
    moves = rng.integers(-shift, shift + 1, (len(pixels), 2))
    return torch.stack([torch.roll(p, (int(dy), int(dx)), (1, 2)) for p, (dy, dx) in zip(pixels, moves, strict=True)])


def train_clip(clip: CLIPModel, train: list[Record], val: list[Record], steps: int, batch_size: int = 128,
               lr: float = 1e-3, seed: int = 0, attribute_weight: float = 0.0, shift: int = 0) -> dict:
    """Contrastive training; records with attributes (the demo world) get hard-negative blocks and
    shared positives for images alike in every attribute, and with `attribute_weight` an auxiliary
    loss that classifies each attribute from the image embedding. `shift`: translation augmentation."""
    size = clip.config.vision_config.image_size
    tok = clip_tokenizer()
    eos = special_id(tok, CLIP_EOS)
    pixels, ids = pixel_tensor(train, size), caption_ids(tok, train)
    val_pixels, val_ids = pixel_tensor(val, size), caption_ids(tok, val)
    rng = np.random.default_rng(seed)
    attributes = [r.attributes for r in train] if all(r.attributes for r in train) else None
    key_of: dict[tuple, int] = {}
    keys = torch.tensor([key_of.setdefault(tuple(a.values()), len(key_of)) for a in attributes] if attributes
                        else range(len(train)))
    heads = AttributeHeads(clip.config.projection_dim, attributes) if attributes and attribute_weight else None
    params = list(clip.parameters()) + (list(heads.parameters()) if heads else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    # Training runs PyTorch's fused attention (faster on a CPU); export needs the eager one back.
    clip.set_attn_implementation("sdpa")
    clip.train()
    start, batches = time.time(), _batches(len(train), batch_size, attributes, rng)
    bar = tqdm(range(steps), desc="CLIP contrastive")
    for _ in bar:
        batch = next(batches)
        text = _batch_ids([ids[i][rng.integers(len(ids[i]))] for i in batch], eos)
        embeds = clip.get_image_features(pixel_values=_shifted(pixels[batch], shift, rng)).pooler_output
        img = F.normalize(embeds, dim=-1)
        txt = F.normalize(clip.get_text_features(input_ids=text).pooler_output, dim=-1)
        logits = clip.logit_scale.exp() * img @ txt.T
        target = _targets(keys[batch])
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T)) / 2
        if heads is not None:
            loss = loss + attribute_weight * heads(embeds, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        bar.set_postfix(loss=f"{loss.item():.3f}")
    clip.eval()
    clip.set_attn_implementation("eager")
    return dict(steps=steps, seconds=round(time.time() - start, 1), final_loss=round(loss.item(), 4),
                val_image_to_text_top1=round(retrieval_accuracy(clip, val_pixels, val_ids, eos), 4))
