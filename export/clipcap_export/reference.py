"""The PyTorch reference captioner that the Rust runtime and its decoder plugins are held against.

Preprocessing is OpenAI CLIP's own `_transform` (PIL bicubic resize of the shorter side, centre crop,
normalise). Every decoder recomputes the whole sequence at every step with Hugging Face's GPT-2 (no KV
cache), so the runtime's cache is checked independently. Each follows its published rule:

- greedy: ClipCap's `generate2` without sampling; the first maximal logit wins.
- beam: ClipCap's `generate_beam`: log-softmax of logits / temperature, beams ranked by cumulative
  log-probability divided by length ** length_penalty; a stopped beam is extended with token 0 at no cost
  and no length; the best beam, cut to its length, is the caption.
- contrastive: Su et al. 2022: among the top-k next tokens, maximise
  (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j), h_j the last-layer states of every earlier position
  (prefix included).
- magic: contrastive plus beta * softmax over the k candidates of CLIP's image-text logits
  (logit_scale * cosine) of the caption so far with the candidate (Su et al. 2022, "Language Models Can
  See").

Captions stop after a stop token (kept in the ids) or after `max_tokens` tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer

from .models import Models
from .tokenizer import clip_ids

with warnings.catch_warnings():
    # clip-anytorch imports pkg_resources, which warns on import; the pin keeps it working.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    from clip.clip import _transform

def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; all mean "not an image"
        raise ValueError(f"{path}: cannot read image: {e}") from e


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """[3, size, size] float32, exactly as OpenAI's CLIP prepares an image."""
    return _transform(size)(image)


@torch.no_grad()
def embed(models: Models, pixels: torch.Tensor) -> torch.Tensor:
    return models.clip.get_image_features(pixel_values=pixels[None]).pooler_output[0]


@dataclass
class Context:
    """What a decoder works from: one image's prefix, and the rules of the bundle."""

    models: Models
    prefix: torch.Tensor  # [1, K, D]
    image_embeds: torch.Tensor  # [E]
    stop_tokens: set[int]
    max_tokens: int
    gpt2_tokenizer: Tokenizer
    clip_tokenizer: Tokenizer | None = None
    steps: list = field(default_factory=list)

    @torch.no_grad()
    def run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the last position [N, V] and last-layer states of every position [N, S, D] for the
        prefix followed by each row of `tokens` [N, T] (T may be 0)."""
        gpt = self.models.gpt
        embeds = torch.cat([self.prefix.expand(tokens.shape[0], -1, -1), gpt.transformer.wte(tokens)], 1)
        out = gpt(inputs_embeds=embeds, output_hidden_states=True)
        return out.logits[:, -1], out.hidden_states[-1]

    @torch.no_grad()
    def clip_similarity(self, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of each text to the image, with CLIP's text tower."""
        ids = torch.tensor(clip_ids(self.clip_tokenizer, texts))
        text = self.models.clip.get_text_features(input_ids=ids).pooler_output
        return F.cosine_similarity(text, self.image_embeds[None], dim=-1)


def greedy(ctx: Context) -> list[int]:
    tokens: list[int] = []
    while True:
        logits, _ = ctx.run(torch.tensor([tokens], dtype=torch.long))
        token = int(torch.argmax(logits[0]))
        tokens.append(token)
        if token in ctx.stop_tokens or len(tokens) == ctx.max_tokens:
            return tokens


def beam(ctx: Context, num_beams: int = 5, length_penalty: float = 1.0, temperature: float = 1.0) -> list[int]:
    stops = torch.tensor(sorted(ctx.stop_tokens))
    logits, _ = ctx.run(torch.zeros(1, 0, dtype=torch.long))
    logp = (logits / temperature).softmax(-1).log()  # softmax then log, as ClipCap computes it
    scores, first = logp[0].topk(num_beams)
    tokens = first[:, None]
    lengths = torch.ones(num_beams)
    stopped = torch.isin(first, stops)
    for _ in range(ctx.max_tokens - 1):
        if stopped.all():
            break
        logits, _ = ctx.run(tokens)
        logp = (logits / temperature).softmax(-1).log()
        logp[stopped] = -float("inf")
        logp[stopped, 0] = 0.0
        total = scores[:, None] + logp
        lengths[~stopped] += 1
        average = total / lengths[:, None] ** length_penalty
        best, flat = average.view(-1).topk(num_beams)
        source, token = flat // logp.shape[1], flat % logp.shape[1]
        lengths = lengths[source]
        scores = best * lengths ** length_penalty
        tokens = torch.cat([tokens[source], token[:, None]], 1)
        stopped = stopped[source] | torch.isin(token, stops)
    final = scores / lengths ** length_penalty
    winner = int(torch.argmax(final))
    return tokens[winner, : int(lengths[winner])].tolist()


def _degeneration_penalty(candidates: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """max_j cos(h_v, h_j) for each candidate state h_v [k, D] against context states [S, D]."""
    return F.cosine_similarity(candidates[:, None, :], context[None, :, :], dim=-1).max(-1).values


def contrastive(ctx: Context, top_k: int = 4, penalty_alpha: float = 0.6, beta: float = 0.0) -> list[int]:
    """Contrastive search; with beta > 0, MAGIC's CLIP-guided variant."""
    tokens: list[int] = []
    logits, hidden = ctx.run(torch.zeros(1, 0, dtype=torch.long))
    context = hidden[0]  # states of every position so far, prefix included
    while True:
        probs, candidates = logits[0].softmax(-1).topk(top_k)
        rows = torch.tensor([tokens + [int(c)] for c in candidates], dtype=torch.long)
        cand_logits, cand_hidden = ctx.run(rows)
        score = (1 - penalty_alpha) * probs - penalty_alpha * _degeneration_penalty(cand_hidden[:, -1], context)
        if beta:
            texts = [ctx.gpt2_tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in rows]
            score = score + beta * (ctx.models.logit_scale * ctx.clip_similarity(texts)).softmax(-1)
        choice = int(torch.argmax(score))
        token = int(candidates[choice])
        tokens.append(token)
        if token in ctx.stop_tokens or len(tokens) == ctx.max_tokens:
            return tokens
        logits = cand_logits[choice:choice + 1]
        context = torch.cat([context, cand_hidden[choice, -1:]], 0)


def magic(ctx: Context, top_k: int = 4, penalty_alpha: float = 0.6, beta: float = 2.0) -> list[int]:
    return contrastive(ctx, top_k, penalty_alpha, beta)


# A decoder with its parameters bound: the token ids it chooses for one image.
Decoder = Callable[[Context], list[int]]

DECODERS = {"greedy": greedy, "beam": beam, "contrastive": contrastive, "magic": magic}


def parse_decoder(spec: str) -> Decoder:
    """`name` or `name:key=value,key=value` (the syntax of `clipcap caption --decoder`)."""
    name, _, args = spec.partition(":")
    if name not in DECODERS:
        raise ValueError(f"unknown reference decoder {name!r}; known: {', '.join(DECODERS)}")
    params = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        params[key] = float(value) if "." in value or "e" in value else int(value)
    return lambda ctx: DECODERS[name](ctx, **params)


@dataclass
class Caption:
    token_ids: list[int]
    image_embeds: torch.Tensor  # [embedding_dim], as the image encoder gives it


def caption_image(models: Models, path: Path, decode: Decoder, **context: object) -> Caption:
    image_embeds = embed(models, preprocess(load_image(path), models.image_size))
    with torch.no_grad():
        prefix = models.clipcap.prefix(image_embeds[None])
    ctx = Context(models=models, prefix=prefix, image_embeds=image_embeds, **context)
    return Caption(decode(ctx), image_embeds)
