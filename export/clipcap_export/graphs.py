"""The four ONNX graphs of a bundle (image encoder, mapper, language model, CLIP text encoder),
exported from PyTorch and checked against it.

Tensor names and shapes are those of docs/bundle.md. Every graph is run with ONNX Runtime right after
export and compared with the PyTorch model it came from; a difference above the bound stops the export.
The language model is compared with Hugging Face's `GPT2LMHeadModel` recomputing the whole sequence,
so the check also proves the KV-cache graph (written here) equal to the model (written there).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, GPT2LMHeadModel

from .models import Models

OPSET = 17  # ONNX Runtime 1.14+ (older Jetson images) and TensorRT 8.6 run opset 17
# |onnx - torch| <= TOLERANCE * (1 + max |torch|): float32 round-off, scaled by the outputs' magnitude.
TOLERANCE = 1e-4


class ExportCheckError(RuntimeError):
    pass


class ImageEncoderGraph(nn.Module):
    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output


class TextEncoderGraph(nn.Module):
    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip.get_text_features(input_ids=input_ids).pooler_output


class LmGraph(nn.Module):
    """GPT-2 forward with the KV cache as explicit tensors (docs/bundle.md, lm.onnx).

    Reads the weights of a Hugging Face GPT2LMHeadModel; written out here rather than wrapping HF's
    forward because the graph's signature is the bundle contract and must not follow HF's cache API.
    """

    def __init__(self, gpt: GPT2LMHeadModel) -> None:
        super().__init__()
        self.t = gpt.transformer
        cfg = gpt.config
        self.width, self.heads = cfg.n_embd, cfg.n_head
        self.head_dim = self.width // self.heads
        # Gemm(transB=1) reads wte as it is; a bias-free matmul would make the exporter store wte twice.
        self.register_buffer("logits_bias", torch.zeros(cfg.vocab_size), persistent=False)

    def forward(self, prefix_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = self.t
        x = torch.cat([prefix_embeds, t.wte(input_ids)], 1)
        batch, new = x.shape[0], x.shape[1]
        past_len = past[0].shape[2]
        x = x + t.wpe(position_ids)
        # New position q sees key k when k is at or before it (causal, offset by the past) and k is not
        # padding: rows of different lengths share a batch, each padded on the left of its past.
        causal = torch.arange(past_len + new)[None, :] <= (torch.arange(new) + past_len)[:, None]
        visible = causal[None, None] & attention_mask[:, None, None, :].bool()
        present = []
        for i, block in enumerate(t.h):
            h = block.ln_1(x)
            q, k, v = block.attn.c_attn(h).split(self.width, dim=2)
            q, k, v = (z.view(batch, new, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
            k = torch.cat([past[2 * i], k], 2)
            v = torch.cat([past[2 * i + 1], v], 2)
            present += [k, v]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            attn = scores.masked_fill(~visible, float("-inf")).softmax(-1)
            y = (attn @ v).transpose(1, 2).reshape(batch, new, self.width)
            x = x + block.attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
        hidden = t.ln_f(x)
        logits = F.linear(hidden[:, -1], t.wte.weight, self.logits_bias)
        return (logits, hidden, *present)


def lm_input_names(layers: int) -> list[str]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["prefix_embeds", "input_ids", "attention_mask", "position_ids", *past]


def lm_output_names(layers: int) -> list[str]:
    return ["logits", "hidden_states"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    module.eval()  # the exporter restores the wrapper's mode afterwards, and with it the wrapped model's
    with torch.no_grad(), warnings.catch_warnings():
        # CLIP's image-size check is a Python branch the tracer warns about (the size is fixed anyway), and
        # the text tower's end-of-text pooling indexes with argmax positions, which are never negative.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    module.eval()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _compare(name: str, got: np.ndarray, want: torch.Tensor, worst: float) -> float:
    want = want.detach().numpy()
    if got.shape != want.shape:
        raise ExportCheckError(f"{name}: ONNX Runtime gives shape {got.shape}, PyTorch {want.shape}")
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    bound = TOLERANCE * (1.0 + scale)
    if not diff <= bound:
        raise ExportCheckError(f"{name}: max |ONNX Runtime - PyTorch| = {diff:.3g} exceeds {bound:.3g}")
    return max(worst, diff)


@dataclass
class ExportReport:
    """Max |ONNX Runtime - PyTorch| per graph, as written into the manifest."""

    image_encoder: float
    mapper: float
    lm: float
    text_encoder: float | None = None


def _export_checked(module: nn.Module, path: Path, input_name: str, output_name: str, example: torch.Tensor,
                    check: torch.Tensor) -> float:
    """Exports a graph of one input and one output, both with a batch axis, traced on `example`, and
    returns max |ONNX Runtime - PyTorch| on `check`."""
    _export(module, (example,), path, [input_name], [output_name],
            {input_name: {0: "batch"}, output_name: {0: "batch"}})
    got = _session(path).run(None, {input_name: check.numpy()})[0]
    with torch.no_grad():
        want = module(check)
    return _compare(f"{path.name} {output_name}", got, want, 0.0)


def export_image_encoder(models: Models, path: Path, size: int) -> float:
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    return _export_checked(ImageEncoderGraph(models.clip), path, "pixel_values", "image_embeds",
                           torch.randn(1, 3, size, size), pixels)


def export_text_encoder(models: Models, path: Path, context: int, bos: int, eos: int) -> float:
    graph = TextEncoderGraph(models.clip)

    def batch(lengths: list[int], seed: int) -> torch.Tensor:
        # start, random text ids, end, zero padding: the layout the runtime feeds.
        g = torch.Generator().manual_seed(seed)
        ids = torch.zeros(len(lengths), context, dtype=torch.long)
        for row, n in enumerate(lengths):
            ids[row, 0], ids[row, n + 1] = bos, eos
            ids[row, 1:n + 1] = torch.randint(0, bos, (n,), generator=g)
        return ids

    return _export_checked(graph, path, "input_ids", "text_embeds", batch([5], 0), batch([1, 7, context - 2], 4))


def export_mapper(models: Models, path: Path) -> float:
    embeds = torch.randn(3, models.embedding_dim, generator=torch.Generator().manual_seed(2))
    return _export_checked(models.clipcap.clip_project, path, "image_embeds", "prefix",
                           torch.randn(1, models.embedding_dim), embeds)


def lm_feeds(names: list[str], prefix: np.ndarray, ids: np.ndarray, lengths: list[int],
              past: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs of one lm.onnx run: row r has `lengths[r]` real positions at the end of its past
    (the rest is padding on the left), and the new positions follow them."""
    batch, new = prefix.shape[0], prefix.shape[1] + ids.shape[1]
    total = past[0].shape[2]
    mask = np.zeros((batch, total + new), np.int64)
    for row, n in enumerate(lengths):
        mask[row, total - n:] = 1
    positions = np.array(lengths, np.int64)[:, None] + np.arange(new, dtype=np.int64)[None, :]
    return {names[0]: prefix, names[1]: ids, names[2]: mask, names[3]: positions} | dict(zip(names[4:], past,
                                                                                             strict=True))


def pad_left(caches: list[list[np.ndarray]]) -> list[np.ndarray]:
    """One batch of past tensors from rows' own caches (each a list of [1, H, T_row, D/H]): every row
    padded on the left to the longest, as the runtime batches captions of different lengths."""
    total = max(c[0].shape[2] for c in caches)
    return [np.concatenate([np.pad(c[i], ((0, 0), (0, 0), (total - c[i].shape[2], 0), (0, 0))) for c in caches])
            for i in range(len(caches[0]))]


def export_lm(models: Models, path: Path) -> float:
    gpt = models.gpt
    cfg = gpt.config
    layers, heads, width = cfg.n_layer, cfg.n_head, cfg.n_embd
    head_dim = width // heads
    inputs, outputs = lm_input_names(layers), lm_output_names(layers)
    axes = {"prefix_embeds": {0: "batch", 1: "prefix_len"}, "input_ids": {0: "batch", 1: "ids_len"},
            "attention_mask": {0: "batch", 1: "total_len"}, "position_ids": {0: "batch", 1: "new_len"},
            "logits": {0: "batch"}, "hidden_states": {0: "batch", 1: "new_len"}}
    axes |= {n: {0: "batch", 2: "past_len"} for n in inputs[4:]}
    axes |= {n: {0: "batch", 2: "total_len"} for n in outputs[2:]}
    # Trace with non-empty prefix, tokens and past so no size is specialised to 0 or 1.
    example = (torch.randn(2, 3, width), torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 9, dtype=torch.long),
               torch.arange(4, 9).repeat(2, 1), *[torch.zeros(2, heads, 4, head_dim) for _ in range(2 * layers)])
    _export(LmGraph(gpt), example, path, inputs, outputs, axes)

    session = _session(path)
    g = torch.Generator().manual_seed(3)
    prefix_len = 5
    empty_prefix = np.zeros((0, 0, width), np.float32)

    def no_past(batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, heads, 0, head_dim), np.float32) for _ in inputs[4:]]

    def want(prefix: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF's model recomputing the whole sequence: last logits, last-layer states."""
        with torch.no_grad():
            out = gpt(inputs_embeds=torch.cat([prefix, gpt.transformer.wte(tokens)], 1), output_hidden_states=True)
        return out.logits[:, -1], out.hidden_states[-1]

    # Check 1: a batch of equal rows, a prefix pass then token steps.
    batch, steps = 3, 4
    prefix = torch.randn(batch, prefix_len, width, generator=g)
    tokens = torch.randint(0, cfg.vocab_size, (batch, steps), generator=g)
    out = session.run(None, lm_feeds(inputs, prefix.numpy(), np.zeros((batch, 0), np.int64), [0] * batch,
                                      no_past(batch)))
    worst = 0.0
    for step in range(steps + 1):
        logits, hidden = want(prefix, tokens[:, :step])
        new = prefix_len if step == 0 else 1
        worst = _compare(f"{path.name} logits (step {step})", out[0], logits, worst)
        worst = _compare(f"{path.name} hidden_states (step {step})", out[1], hidden[:, -new:], worst)
        if step < steps:
            feeds = lm_feeds(inputs, empty_prefix.reshape(batch, 0, width), tokens[:, step:step + 1].numpy(),
                              [prefix_len + step] * batch, out[2:])
            out = session.run(None, feeds)

    # Check 2: rows of different lengths in one batch, each past padded on the left (how the runtime
    # batches captions), against each row recomputed alone.
    lengths, steps = [0, 2, 5], 3
    prefixes = torch.randn(len(lengths), prefix_len, width, generator=g)
    tokens = torch.randint(0, cfg.vocab_size, (len(lengths), max(lengths) + steps), generator=g)
    caches = []
    for row, n in enumerate(lengths):  # each row alone: its prefix pass and its first n tokens
        out = session.run(None, lm_feeds(inputs, prefixes[row:row + 1].numpy(), tokens[row:row + 1, :n].numpy(),
                                          [0], no_past(1)))
        caches.append(out[2:])
    past = pad_left(caches)
    real = [prefix_len + n for n in lengths]
    for step in range(steps):
        ids = np.stack([tokens[row, n + step:n + step + 1].numpy() for row, n in enumerate(lengths)])
        out = session.run(None, lm_feeds(inputs, empty_prefix.reshape(len(lengths), 0, width), ids, real, past))
        for row, n in enumerate(lengths):
            logits, hidden = want(prefixes[row:row + 1], tokens[row:row + 1, :n + step + 1])
            worst = _compare(f"{path.name} padded logits (row {row}, step {step})", out[0][row:row + 1], logits, worst)
            worst = _compare(f"{path.name} padded hidden_states (row {row}, step {step})", out[1][row:row + 1],
                             hidden[:, -1:], worst)
        past, real = out[2:], [r + 1 for r in real]
    return worst


def export_graphs(models: Models, out_dir: Path, size: int, text: tuple[int, int, int] | None) -> ExportReport:
    """`text`: (context length, start id, end id) to export the CLIP text encoder too."""
    return ExportReport(
        image_encoder=export_image_encoder(models, out_dir / "image_encoder.onnx", size),
        mapper=export_mapper(models, out_dir / "mapper.onnx"),
        lm=export_lm(models, out_dir / "lm.onnx"),
        text_encoder=export_text_encoder(models, out_dir / "text_encoder.onnx", *text) if text else None,
    )
