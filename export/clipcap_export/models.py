"""The ClipCap model in PyTorch: CLIP's image tower, the mapping network and GPT-2.

Models come either from the Hugging Face hub (real weights, needs internet or a warm cache) or from
configs with seeded random weights (`tiny` for tests, `full` with the real shapes for benchmarks).
`ClipCap` keeps the state-dict layout of the original release (`clip_project.*`, `gpt.*`) so its
checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, GPT2Config, GPT2LMHeadModel

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_GPT2 = "gpt2"
DEFAULT_PREFIX_LENGTH = 10

# Random-init architectures. `tiny` keeps GPT-2's real 50257-token vocabulary (the tokenizer is real)
# but is narrow and shallow, so a whole bundle stays a few megabytes. Its initializer range is wider
# than GPT-2's 0.02 so that the random logits have clear winners: with 0.02 the top two logits of a
# 32-wide model differ by ~1e-3, and the ONNX-vs-PyTorch token parity would hinge on rounding.
RANDOM_CONFIGS = {
    "tiny": dict(
        clip=dict(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=224, patch_size=32, initializer_range=0.2),
            # CLIP's real 49408-token vocabulary, on a 16-wide tower to keep the bundle small.
            text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, vocab_size=49408, initializer_range=0.2),
            projection_dim=32),
        gpt2=dict(n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=50257, initializer_range=0.2),
    ),
    # CLIPConfig's and GPT2Config's defaults are ViT-B/32 (with its text tower) and GPT-2 124M.
    "full": dict(clip=dict(), gpt2=dict()),
}


@dataclass(frozen=True)
class Source:
    """Where the pretrained parts come from."""

    clip: str = DEFAULT_CLIP
    gpt2: str = DEFAULT_GPT2
    random_init: str | None = None  # "tiny" | "full": seeded random weights, no download
    seed: int = 0

    def describe(self, part: str) -> str:
        if self.random_init:
            return f"random-init:{self.random_init} seed={self.seed}"
        return self.clip if part == "clip" else self.gpt2


class MlpMapper(nn.Module):
    """ClipCap's MLP: Linear(E -> D*K/2), Tanh, Linear(-> D*K), viewed as K prefix vectors."""

    kind = "mlp"

    def __init__(self, embedding_dim: int, width: int, prefix_length: int):
        super().__init__()
        hidden = width * prefix_length // 2
        self.prefix_length = prefix_length
        self.width = width
        # Attribute name `model` and indices 0/2 match the release's `clip_project.model.*` keys.
        self.model = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.Tanh(), nn.Linear(hidden, width * prefix_length))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.model(image_embeds).view(-1, self.prefix_length, self.width)


class ClipCap(nn.Module):
    """Mapper plus GPT-2, named as in the ClipCap release so its checkpoints load as they are."""

    def __init__(self, clip_project: nn.Module, gpt: GPT2LMHeadModel):
        super().__init__()
        self.clip_project = clip_project
        self.gpt = gpt

    @property
    def prefix_length(self) -> int:
        return self.clip_project.prefix_length


@dataclass
class Models:
    """Everything a bundle is exported from. `clip` has both towers: the image tower feeds the mapper,
    the text tower scores captions (CLIPScore, CLIP-guided decoding)."""

    clip: CLIPModel
    clipcap: ClipCap
    normalize_embedding: bool = False

    @property
    def gpt(self) -> GPT2LMHeadModel:
        return self.clipcap.gpt

    @property
    def embedding_dim(self) -> int:
        return self.clip.config.projection_dim

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature: image-text logits are logit_scale x cosine."""
        return float(self.clip.logit_scale.detach().exp())

    def eval(self) -> "Models":
        self.clip.eval()
        self.clipcap.eval()
        return self


def _seeded(seed: int, build):
    # Each part is built right after seeding (with its own offset of the seed), so one part's
    # architecture does not change another part's weights.
    torch.manual_seed(seed)
    return build()


def load_clip(source: Source) -> CLIPModel:
    if source.random_init:
        cfg = CLIPConfig(**RANDOM_CONFIGS[source.random_init]["clip"])
        cfg._attn_implementation = "eager"
        return _seeded(source.seed, lambda: CLIPModel(cfg))
    return CLIPModel.from_pretrained(source.clip, attn_implementation="eager")


def load_gpt2(source: Source) -> GPT2LMHeadModel:
    if source.random_init:
        cfg = GPT2Config(**RANDOM_CONFIGS[source.random_init]["gpt2"])
        cfg._attn_implementation = "eager"
        return _seeded(source.seed + 1, lambda: GPT2LMHeadModel(cfg))
    return GPT2LMHeadModel.from_pretrained(source.gpt2, attn_implementation="eager")


def build_models(source: Source, prefix_length: int = DEFAULT_PREFIX_LENGTH) -> Models:
    """CLIP and GPT-2 from `source` and a freshly initialised MLP mapper (seeded)."""
    clip = load_clip(source)
    gpt = load_gpt2(source)
    mapper = _seeded(source.seed + 2, lambda: MlpMapper(clip.config.projection_dim, gpt.config.n_embd, prefix_length))
    return Models(clip=clip, clipcap=ClipCap(mapper, gpt)).eval()


class CheckpointError(ValueError):
    pass


# Buffers that old transformers versions saved with GPT-2 (causal mask constants), not weights.
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")


def load_clipcap_checkpoint(path: str, source: Source, require_gpt: bool) -> Models:
    """Models whose mapper (and GPT-2, when the checkpoint has `gpt.*`) come from a ClipCap checkpoint.

    The mapper's shape is read from the weights: `clip_project.model.0.weight` is [D*K/2, E] and
    `clip_project.model.2.weight` is [D*K, D*K/2], with D the GPT-2 width of `source`.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    unknown = [k for k in state if not k.startswith(("clip_project.", "gpt."))]
    if unknown:
        raise CheckpointError(f"{path}: unexpected keys (not clip_project.* or gpt.*): {unknown[:5]}")
    for key in ("clip_project.model.0.weight", "clip_project.model.2.weight"):
        if key not in state:
            raise CheckpointError(f"{path}: missing {key}; only the MLP mapper of the ClipCap release is supported")
    has_gpt = any(k.startswith("gpt.") for k in state)
    if require_gpt and not has_gpt:
        raise CheckpointError(f"{path}: no gpt.* weights; the ClipCap release checkpoints carry a fine-tuned GPT-2")

    clip = load_clip(source)
    gpt = load_gpt2(source)
    width = gpt.config.n_embd
    hidden, embedding_dim = state["clip_project.model.0.weight"].shape
    out = state["clip_project.model.2.weight"].shape[0]
    if out % width or out // width * width // 2 != hidden:
        raise CheckpointError(
            f"{path}: clip_project.model.2.weight has {out} rows, not a multiple of GPT-2 width {width} "
            f"with hidden size {hidden}")
    if embedding_dim != clip.config.projection_dim:
        raise CheckpointError(
            f"{path}: clip_project.model.0.weight expects {embedding_dim}-d CLIP embeddings, "
            f"the image encoder gives {clip.config.projection_dim}")
    model = ClipCap(MlpMapper(embedding_dim, width, out // width), gpt)
    state = {k: v for k, v in state.items() if not k.endswith(_GPT2_BUFFERS)}
    expected = model.state_dict()
    for k, v in state.items():
        if k not in expected:
            raise CheckpointError(f"{path}: key {k} does not exist in the model")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    # GPT-2's lm_head is tied to wte; checkpoints may carry either or both.
    missing = [k for k in expected if k not in state and k != "gpt.lm_head.weight"]
    if has_gpt and missing:
        raise CheckpointError(f"{path}: missing keys {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return Models(clip=clip, clipcap=model).eval()
