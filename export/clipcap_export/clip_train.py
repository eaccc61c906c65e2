"""Contrastive training of a CLIP from scratch (image and text towers), for the demo world: no
pretrained CLIP can be downloaded here, and ClipCap needs embeddings that carry the scene's meaning.

The loss is CLIP's: symmetric cross-entropy over the image-text similarity matrix of a batch, scaled
by the learned temperature. Each step pairs every image with one of its captions at random.

Contrastive learning only learns what tells the images of a batch apart, and in a random batch two
scenes rarely differ in position or shape alone. With `groups`, half of each batch is drawn from a few
groups of similar images (the demo groups scenes by background, colour and count), so the details
that remain, shape and position, matter.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import CLIPModel

from .data import Record
from .reference import load_image, preprocess
from .tokenizer import clip_ids, clip_tokenizer

CLIP_EOS_ID = 49407  # <|endoftext|> in CLIP's vocabulary


def pixel_tensor(records: list[Record], size: int) -> torch.Tensor:
    """Every record's image, preprocessed as OpenAI's CLIP does: [N, 3, size, size]."""
    return torch.stack([preprocess(load_image(r.path), size) for r in tqdm(records, desc="preprocess", leave=False)])


def caption_ids(records: list[Record]) -> list[list[list[int]]]:
    tok = clip_tokenizer()
    return [clip_ids(tok, r.captions) for r in records]


def _batch_ids(ids: list[list[int]]) -> torch.Tensor:
    # The text tower is causal and pools at end-of-text, so cutting the padding after the longest
    # caption of the batch (instead of padding to 77) gives the same embeddings, faster.
    length = max(i.index(CLIP_EOS_ID) + 1 for i in ids)
    return torch.tensor([i[:length] for i in ids])


def retrieval_accuracy(clip: CLIPModel, pixels: torch.Tensor, ids: list[list[list[int]]]) -> float:
    """Image-to-text top-1 accuracy among the first captions of the given images."""
    with torch.no_grad():
        img = F.normalize(clip.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt = F.normalize(clip.get_text_features(input_ids=_batch_ids([c[0] for c in ids])).pooler_output, dim=-1)
    return float((img @ txt.T).argmax(1).eq(torch.arange(len(ids))).float().mean())


def _batches(n: int, batch_size: int, groups: list | None, rng: np.random.Generator):
    """Endless batches of indices: random ones, or half random and half from 8 groups (hard negatives)."""
    members: dict = {}
    for i, g in enumerate(groups or []):
        members.setdefault(g, []).append(i)
    pools = [m for m in members.values() if len(m) >= 2]
    while True:
        if not pools:
            yield rng.choice(n, batch_size, replace=False)
            continue
        per_group = batch_size // 16
        hard = [i for g in rng.choice(len(pools), 8, replace=False)
                for i in rng.choice(pools[g], min(per_group, len(pools[g])), replace=False)]
        rest = rng.choice(np.setdiff1d(np.arange(n), hard), batch_size - len(hard), replace=False)
        yield np.concatenate([np.array(hard, dtype=int), rest])


def train_clip(clip: CLIPModel, train: list[Record], val: list[Record], steps: int, batch_size: int = 128,
               lr: float = 1e-3, seed: int = 0, groups: list | None = None) -> dict:
    size = clip.config.vision_config.image_size
    pixels, ids = pixel_tensor(train, size), caption_ids(train)
    val_pixels, val_ids = pixel_tensor(val, size), caption_ids(val)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    clip.train()
    start, batches = time.time(), _batches(len(train), batch_size, groups, rng)
    bar = tqdm(range(steps), desc="CLIP contrastive")
    for _ in bar:
        batch = next(batches)
        text = _batch_ids([ids[i][rng.integers(len(ids[i]))] for i in batch])
        img = F.normalize(clip.get_image_features(pixel_values=pixels[batch]).pooler_output, dim=-1)
        txt = F.normalize(clip.get_text_features(input_ids=text).pooler_output, dim=-1)
        logits = clip.logit_scale.exp() * img @ txt.T
        target = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        bar.set_postfix(loss=f"{loss.item():.3f}")
    clip.eval()
    return dict(steps=steps, seconds=round(time.time() - start, 1), final_loss=round(loss.item(), 4),
                val_image_to_text_top1=round(retrieval_accuracy(clip, val_pixels, val_ids), 4))
