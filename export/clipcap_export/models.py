"""The ClipCap model in PyTorch: CLIP (both towers), the mapping network and GPT-2.

Each pretrained part comes from a Hugging Face name, a local folder written by `save_pretrained`
(the demo's trained CLIP), or `random:<config>`: seeded random weights from RANDOM_CONFIGS (`tiny`
for tests, `demo` for the synthetic world, `full` with the real shapes for benchmarks).
`ClipCap` keeps the state-dict layout of the original release (`clip_project.*`, `gpt.*`), so release
checkpoints load unchanged; checkpoints written here add what is needed to rebuild the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, GPT2Config, GPT2LMHeadModel

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_GPT2 = "gpt2"
DEFAULT_PREFIX_LENGTH = 10
RANDOM = "random:"
T = TypeVar("T")
CHECKPOINT_FORMAT = "clipcap-export-checkpoint-1"

# Random-init architectures, all with the real vocabularies (GPT-2's 50257 tokens, CLIP's 49408).
# `tiny`'s initializer range is wider than the usual 0.02 so that its random logits have clear winners:
# with 0.02 the top two logits of a 32-wide model differ by ~1e-3, and ONNX-vs-PyTorch token parity
# would hinge on rounding. `demo` is trained (`clipcap-export demo`, pipeline.py), so it keeps 0.02; its
# images are 64 x 64 so that training fits in minutes on two CPU cores, and its image tower is 96 wide:
# 64 wide, it could not tell circles from squares (a linear probe on its embeddings: 90%; docs/training.md).
RANDOM_CONFIGS = {
    "tiny": dict(
        clip=dict(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=224, patch_size=32, initializer_range=0.2),
            text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, vocab_size=49408, initializer_range=0.2),
            projection_dim=32),
        gpt2=dict(n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=50257, initializer_range=0.2),
    ),
    "demo": dict(
        clip=dict(
            vision_config=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                               image_size=64, patch_size=8),
            text_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, vocab_size=49408),
            projection_dim=64),
        gpt2=dict(n_embd=48, n_layer=3, n_head=4, n_positions=64, vocab_size=50257),
    ),
    # CLIPConfig's and GPT2Config's defaults are ViT-B/32 (with its text tower) and GPT-2 124M.
    "full": dict(clip=dict(), gpt2=dict()),
}


def pick_device(local_rank: int | None = None, cpu_work: str | None = None) -> torch.device:
    """CUDA when there is one: the current device, or with `local_rank` (torchrun) that device, made
    current. Otherwise the CPU, with a note that `cpu_work` ("training") is slow there, if given."""
    if torch.cuda.is_available():
        if local_rank is None:
            return torch.device("cuda")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    if cpu_work:
        print(f"note: no CUDA device; {cpu_work} on CPU (slow for COCO-sized data)")
    return torch.device("cpu")


def _random_config(name: str, part: str) -> dict:
    key = name.removeprefix(RANDOM)
    if key not in RANDOM_CONFIGS:
        raise ValueError(f"unknown random config {name!r}; known: {', '.join(RANDOM + k for k in RANDOM_CONFIGS)}")
    return RANDOM_CONFIGS[key][part]


@dataclass(frozen=True)
class Source:
    """Where CLIP and GPT-2 come from: a hub name, a local folder, or `random:<config>`."""

    clip: str = DEFAULT_CLIP
    gpt2: str = DEFAULT_GPT2
    seed: int = 0  # of random weights (and of a freshly initialised mapper)

    @staticmethod
    def random(config: str, seed: int = 0) -> "Source":
        return Source(clip=RANDOM + config, gpt2=RANDOM + config, seed=seed)

    def describe(self, part: str) -> str:
        name = self.clip if part == "clip" else self.gpt2
        return f"{name} seed={self.seed}" if name.startswith(RANDOM) else name


def _seeded(seed: int, build: Callable[[], T]) -> T:
    # Each part is built right after seeding (with its own offset of the seed), so one part's
    # architecture does not change another part's weights.
    torch.manual_seed(seed)
    return build()


def load_clip(source: Source) -> CLIPModel:
    if source.clip.startswith(RANDOM):
        cfg = CLIPConfig(**_random_config(source.clip, "clip"))
        cfg._attn_implementation = "eager"
        return _seeded(source.seed, lambda: CLIPModel(cfg)).eval()
    return CLIPModel.from_pretrained(source.clip, attn_implementation="eager").eval()


def gpt2_from_config(config: dict) -> GPT2LMHeadModel:
    cfg = GPT2Config(**config)
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def load_gpt2(source: Source, dropout: float | None = None) -> GPT2LMHeadModel:
    """GPT-2 from `source`; `dropout` overrides its three dropout rates (training)."""
    rates = {} if dropout is None else dict(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    if source.gpt2.startswith(RANDOM):
        config = _random_config(source.gpt2, "gpt2") | rates
        return _seeded(source.seed + 1, lambda: gpt2_from_config(config))
    return GPT2LMHeadModel.from_pretrained(source.gpt2, attn_implementation="eager", **rates)


class MlpMapper(nn.Module):
    """ClipCap's MLP: Linear(E -> D*K/2), Tanh, Linear(-> D*K), viewed as K prefix vectors."""

    kind = "mlp"

    def __init__(self, embedding_dim: int, width: int, prefix_length: int) -> None:
        super().__init__()
        hidden = width * prefix_length // 2
        self.embedding_dim, self.width, self.prefix_length = embedding_dim, width, prefix_length
        # Attribute name `model` and indices 0/2 match the release's `clip_project.model.*` keys.
        self.model = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.Tanh(),
                                   nn.Linear(hidden, width * prefix_length))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.model(image_embeds).view(-1, self.prefix_length, self.width)

    def config(self) -> dict:
        return dict(kind=self.kind, embedding_dim=self.embedding_dim, width=self.width,
                    prefix_length=self.prefix_length)


class _Block(nn.Module):
    """Pre-norm transformer block, attention written out so that it exports to plain ONNX ops."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(d, 2))
        attn = ((q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln2(x))


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the embedding becomes `clip_length` tokens, which attend together
    with `prefix_length` learned constants through a transformer; the constants' outputs are the prefix."""

    kind = "transformer"

    def __init__(self, embedding_dim: int, width: int, prefix_length: int, clip_length: int | None = None,
                 layers: int = 8, heads: int = 8) -> None:
        super().__init__()
        clip_length = clip_length or prefix_length
        self.embedding_dim, self.width, self.prefix_length = embedding_dim, width, prefix_length
        self.clip_length, self.layers, self.heads = clip_length, layers, heads
        self.linear = nn.Linear(embedding_dim, clip_length * width)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, width))
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.linear(image_embeds).view(-1, self.clip_length, self.width)
        x = torch.cat([x, self.prefix_const.expand(x.shape[0], -1, -1)], 1)
        for block in self.blocks:
            x = block(x)
        return x[:, self.clip_length:]

    def config(self) -> dict:
        return dict(kind=self.kind, embedding_dim=self.embedding_dim, width=self.width,
                    prefix_length=self.prefix_length, clip_length=self.clip_length, layers=self.layers,
                    heads=self.heads)


MAPPERS = {"mlp": MlpMapper, "transformer": TransformerMapper}


def build_mapper(config: dict) -> nn.Module:
    config = dict(config)
    kind = config.pop("kind")
    if kind not in MAPPERS:
        raise ValueError(f"unknown mapper {kind!r}; known: {', '.join(MAPPERS)}")
    return MAPPERS[kind](**config)


class ClipCap(nn.Module):
    """Mapper plus GPT-2, named as in the ClipCap release so its checkpoints load as they are."""

    def __init__(self, clip_project: nn.Module, gpt: GPT2LMHeadModel, normalize: bool = False) -> None:
        super().__init__()
        self.clip_project = clip_project
        self.gpt = gpt
        self.normalize = normalize  # L2-normalise CLIP embeddings before the mapper

    @property
    def prefix_length(self) -> int:
        return self.clip_project.prefix_length

    def prefix(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """GPT-2's prefix [N, K, D] of CLIP image embeddings [N, E]."""
        if self.normalize:
            image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        return self.clip_project(image_embeds)


@dataclass
class Models:
    """Everything a bundle is exported from. `clip` has both towers: the image tower feeds the mapper,
    the text tower scores captions (CLIPScore, CLIP-guided decoding)."""

    clip: CLIPModel
    clipcap: ClipCap

    @property
    def gpt(self) -> GPT2LMHeadModel:
        return self.clipcap.gpt

    @property
    def normalize_embedding(self) -> bool:
        return self.clipcap.normalize

    @property
    def embedding_dim(self) -> int:
        return self.clip.config.projection_dim

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature: image-text logits are logit_scale x cosine."""
        return float(self.clip.logit_scale.detach().exp())

    @property
    def image_size(self) -> int:
        return self.clip.config.vision_config.image_size

    def eval(self) -> "Models":
        self.clip.eval()
        self.clipcap.eval()
        return self


def build_models(source: Source, mapper: str = "mlp", prefix_length: int = DEFAULT_PREFIX_LENGTH,
                 normalize: bool = False, dropout: float | None = None, **mapper_options: int) -> Models:
    """CLIP and GPT-2 from `source` and a freshly initialised mapper (seeded)."""
    clip = load_clip(source)
    gpt = load_gpt2(source, dropout)
    config = dict(kind=mapper, embedding_dim=clip.config.projection_dim, width=gpt.config.n_embd,
                  prefix_length=prefix_length, **mapper_options)
    projector = _seeded(source.seed + 2, lambda: build_mapper(config))
    return Models(clip=clip, clipcap=ClipCap(projector, gpt, normalize)).eval()


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: Path, models: Models, source: Source, include_gpt: bool, **extra: object) -> None:
    """A checkpoint that rebuilds the model by itself: weights (GPT-2's only if `include_gpt`, i.e. it
    was trained), mapper and GPT-2 configs, the sources, and `extra` (training state, settings)."""
    state = {k: v for k, v in models.clipcap.state_dict().items() if include_gpt or k.startswith("clip_project.")}
    torch.save(dict(format=CHECKPOINT_FORMAT, state_dict=state, mapper=models.clipcap.clip_project.config(),
                    normalize=models.normalize_embedding, gpt2_config=models.gpt.config.to_diff_dict(),
                    clip=source.clip, gpt2=source.gpt2, seed=source.seed, **extra), path)


# Buffers that old transformers versions saved with GPT-2 (causal mask constants), not weights.
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")


def read_checkpoint(path: Path) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {e}") from e
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{path}: expected a state dict or a clipcap-export checkpoint")
    return data


def load_checkpoint(path: Path, source: Source, require_gpt: bool = False, clip_override: bool = False) -> Models:
    """Models from a checkpoint: one written by `train` (it names its own sources; `clip_override`
    takes CLIP from `source` instead), or the ClipCap release format (a state dict with `clip_project.*`
    and `gpt.*`, MLP mapper; CLIP and GPT-2's config from `source`, the mapper's shape from its weights)."""
    return checkpoint_models(read_checkpoint(path), path, source, require_gpt, clip_override)


def checkpoint_models(data: dict, path: Path, source: Source, require_gpt: bool = False,
                      clip_override: bool = False) -> Models:
    """`load_checkpoint` of a checkpoint already read from `path` by `read_checkpoint`."""
    ours = data.get("format") == CHECKPOINT_FORMAT
    state = data["state_dict"] if ours else data
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_dict is not a dict of tensors")
    unknown = [k for k in state if not k.startswith(("clip_project.", "gpt."))]
    if unknown:
        raise CheckpointError(f"{path}: unexpected keys (not clip_project.* or gpt.*): {unknown[:5]}")
    has_gpt = any(k.startswith("gpt.") for k in state)
    if require_gpt and not has_gpt:
        raise CheckpointError(f"{path}: no gpt.* weights; the ClipCap release checkpoints carry a fine-tuned GPT-2")

    if ours:
        ckpt_source = Source(clip=source.clip if clip_override else data["clip"], gpt2=data["gpt2"], seed=data["seed"])
        clip = load_clip(ckpt_source)
        gpt = gpt2_from_config(data["gpt2_config"]) if has_gpt else load_gpt2(ckpt_source)
        mapper = build_mapper(data["mapper"])
        normalize = bool(data["normalize"])
    else:
        clip, gpt = load_clip(source), load_gpt2(source)
        mapper = _release_mapper(path, state, gpt.config.n_embd)
        normalize = False
    if mapper.embedding_dim != clip.config.projection_dim:
        raise CheckpointError(f"{path}: the mapper expects {mapper.embedding_dim}-d CLIP embeddings, "
                              f"the image encoder gives {clip.config.projection_dim}")
    model = ClipCap(mapper, gpt, normalize)
    state = {k: v for k, v in state.items() if not k.endswith(_GPT2_BUFFERS)}
    expected = model.state_dict()
    for k, v in state.items():
        if k not in expected:
            raise CheckpointError(f"{path}: key {k} does not exist in the model")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, "
                                  f"the model expects {tuple(expected[k].shape)}")
    # GPT-2's lm_head is tied to wte; checkpoints may carry either or both.
    missing = [k for k in expected
               if k not in state and k != "gpt.lm_head.weight" and (has_gpt or k.startswith("clip_project."))]
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return Models(clip=clip, clipcap=model).eval()


def _release_mapper(path: Path, state: dict, width: int) -> MlpMapper:
    """The release's MLP, shaped from its weights: model.0 is [D*K/2, E], model.2 is [D*K, D*K/2]."""
    for key in ("clip_project.model.0.weight", "clip_project.model.2.weight"):
        if key not in state:
            raise CheckpointError(f"{path}: missing {key}; only the MLP mapper of the ClipCap release is supported")
    hidden, embedding_dim = state["clip_project.model.0.weight"].shape
    out = state["clip_project.model.2.weight"].shape[0]
    if out % width or out // width * width // 2 != hidden:
        raise CheckpointError(f"{path}: clip_project.model.2.weight has {out} rows, not a multiple of GPT-2 width "
                              f"{width} with hidden size {hidden}")
    return MlpMapper(embedding_dim, width, out // width)
