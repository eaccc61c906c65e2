"""The PyTorch reference captioner that the Rust runtime is held against.

Preprocessing is OpenAI CLIP's own `_transform` (PIL bicubic resize of the shorter side, centre crop,
normalise). Decoding follows ClipCap's `generate2` with greedy choice: the whole sequence is recomputed
every step (no KV cache, so the cache of lm.onnx is checked independently), the first maximal logit
wins, and generation stops after a stop token (kept in the ids) or after `max_tokens` tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

with warnings.catch_warnings():
    # clip-anytorch imports pkg_resources, which warns on import; the pin keeps it working.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    from clip.clip import _transform

from .models import Models

CLIP_SIZE = 224


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; all mean "not an image"
        raise ValueError(f"{path}: cannot read image: {e}") from e


def preprocess(image: Image.Image, size: int = CLIP_SIZE) -> torch.Tensor:
    """[3, size, size] float32, exactly as OpenAI's CLIP prepares an image."""
    return _transform(size)(image)


@dataclass
class Caption:
    token_ids: list[int]
    image_embeds: torch.Tensor  # [embedding_dim], as the image encoder gives it


@torch.no_grad()
def embed(models: Models, pixels: torch.Tensor) -> torch.Tensor:
    return models.clip(pixel_values=pixels[None]).image_embeds[0]


@torch.no_grad()
def prefix_of(models: Models, image_embeds: torch.Tensor) -> torch.Tensor:
    if models.normalize_embedding:
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    return models.clipcap.clip_project(image_embeds[None])


@torch.no_grad()
def greedy(models: Models, prefix: torch.Tensor, stop_tokens: set[int], max_tokens: int) -> list[int]:
    gpt = models.gpt
    generated = prefix
    tokens: list[int] = []
    for _ in range(max_tokens):
        logits = gpt(inputs_embeds=generated).logits[0, -1]
        token = int(torch.argmax(logits))
        tokens.append(token)
        if token in stop_tokens:
            break
        generated = torch.cat([generated, gpt.transformer.wte(torch.tensor([[token]]))], 1)
    return tokens


def caption_image(models: Models, path: Path, stop_tokens: set[int], max_tokens: int) -> Caption:
    image_embeds = embed(models, preprocess(load_image(path)))
    return Caption(greedy(models, prefix_of(models, image_embeds), stop_tokens, max_tokens), image_embeds)
