"""Training the mapping network (and optionally GPT-2) on cached CLIP embeddings: the ClipCap recipe.

One process, or several under `torchrun` (DistributedDataParallel: NCCL on CUDA, gloo on CPU). The
loss is cross-entropy on caption tokens only: prefix positions are not scored, padding is masked out of
both attention and loss (the original padded with token 0, GPT-2's "!", which silently dropped real
"!" tokens from the loss). Each process's token sum is divided by the token count of the whole global
batch, so N processes compute exactly the gradient of one process with the same global batch.

A checkpoint per epoch (resumable: model, optimizer, schedule, epoch), a CSV of the loss per step and
a PNG plot of it are written to the run folder.
"""

from __future__ import annotations

import csv
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tokenizers import Tokenizer
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from .data import EmbeddingSet
from .models import Models, Source, build_models, checkpoint_models, pick_device, read_checkpoint, save_checkpoint
from .plots import figure


@dataclass
class TrainConfig:
    """Defaults are ClipCap's COCO recipe (MLP mapper, GPT-2 tuned)."""

    mapper: str = "mlp"
    prefix_length: int = 10
    clip_length: int | None = None  # transformer mapper: tokens made from the embedding (default: prefix_length)
    mapper_layers: int = 8
    freeze_gpt: bool = False
    normalize: bool = False  # L2-normalise CLIP embeddings before the mapper
    lr: float = 2e-5
    warmup: int = 5000
    batch_size: int = 40  # global: split across processes
    epochs: int = 10
    max_caption_tokens: int = 40
    captions_per_image: int | None = None  # train on this many of each image's captions (default: all)
    bf16: bool = False  # autocast on CUDA
    dropout: float | None = None  # override GPT-2's dropout rates
    shuffle: bool = True
    seed: int = 0


class CaptionPairs(Dataset):
    """(embedding, caption tokens) for every caption of every image in the given rows, or for
    `per_image` of each image's captions (a seeded choice, the same every epoch)."""

    def __init__(self, emb: EmbeddingSet, rows: list[int], tokenizer: Tokenizer, max_tokens: int,
                 per_image: int | None = None, seed: int = 0) -> None:
        self.emb = emb
        rng = np.random.default_rng(seed)
        self.pairs = [(row, caption) for row in rows
                      for caption in (emb.records[row].captions if per_image is None else
                                      rng.permutation(emb.records[row].captions)[:per_image].tolist())]
        self.tokens = [tokenizer.encode(c, add_special_tokens=False).ids[:max_tokens] for _, c in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.emb.embeddings[self.pairs[i][0]])), torch.tensor(self.tokens[i])


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    embeds = torch.stack([b[0] for b in batch])
    length = max(len(b[1]) for b in batch)
    tokens = torch.zeros(len(batch), length, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.long)
    for i, (_, t) in enumerate(batch):
        tokens[i, :len(t)], mask[i, :len(t)] = t, 1
    return embeds, tokens, mask


class _VocabularyCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` (the LM head) against `targets`, with the gradients
    computed in the forward pass, a chunk of rows at a time. The same as PyTorch's cross_entropy over
    lm_head(hidden), but the [rows, vocabulary] logits are never held whole: with GPT-2's 50257 tokens
    and a small model, materialising them (and their log-softmax, its gradient, the zeroed gradient of
    the lookup) was 90% of a CPU training step; chunked, the demo's ClipCap trains 2.2 times faster.
    Logits are float32 even under autocast, as the plain loss had them."""

    CHUNK = 64  # rows: 64 x 50257 logits (13 MB) stay in cache; measured faster than 32 or 128

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, hidden: torch.Tensor, weight: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, len(hidden), _VocabularyCrossEntropy.CHUNK):
            h = hidden[start:start + _VocabularyCrossEntropy.CHUNK]
            t = targets[start:start + _VocabularyCrossEntropy.CHUNK]
            logits = (h @ weight.T).float()
            picked = logits.gather(1, t[:, None])
            top = logits.amax(1, keepdim=True)
            probs = logits.sub_(top).exp_()  # in place: one [chunk, vocabulary] buffer throughout
            total = probs.sum(1, keepdim=True)
            loss += (top + total.log() - picked).sum()
            probs.div_(total)[torch.arange(len(t), device=t.device), t] -= 1  # d loss / d logits
            grad_hidden[start:start + len(t)] = probs @ weight
            grad_weight.addmm_(probs.T, h.float())
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad, grad_weight * grad, None


class CaptionLoss(nn.Module):
    """Sum of the caption tokens' cross-entropy, and their number (so the caller chooses the divisor)."""

    def __init__(self, models: Models) -> None:
        super().__init__()
        self.model = models.clipcap

    def forward(self, embeds: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.model.prefix(embeds)
        k = prefix.shape[1]
        gpt = self.model.gpt
        x = torch.cat([prefix.to(gpt.transformer.wte.weight.dtype), gpt.transformer.wte(tokens)], 1)
        attention = torch.cat([torch.ones(mask.shape[0], k, dtype=mask.dtype, device=mask.device), mask], 1)
        hidden = gpt.transformer(inputs_embeds=x, attention_mask=attention).last_hidden_state
        # Position k-1+t predicts token t; the prefix positions themselves are never scored, and the
        # vocabulary-wide logits are computed for real tokens only (not padding). lm_head has no bias.
        real = mask.bool()
        ce = _VocabularyCrossEntropy.apply(hidden[:, k - 1:-1][real], gpt.lm_head.weight, tokens[real])
        return ce, mask.sum()


def step_loss(model: nn.Module, embeds: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
              world: int) -> tuple[torch.Tensor, float]:
    """The loss to backpropagate in one of `world` processes, and this process's mean token loss.

    Each process divides its token sum by the global batch's token count (times `world`, since DDP
    averages gradients over processes), so together they compute one process's gradient on the
    whole batch, whatever the split of tokens between them."""
    ce, n = model(embeds, tokens, mask)
    total = n.detach().clone()
    if world > 1:
        dist.all_reduce(total)
    return ce * world / total, (ce.detach() / n).item()


def trainable_parameters(models: Models, freeze_gpt: bool) -> int:
    parts = [models.clipcap.clip_project] + ([] if freeze_gpt else [models.gpt])
    return sum(p.numel() for part in parts for p in part.parameters())


def _distributed() -> tuple[int, int, int]:
    """(rank, local rank, world size), joining the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def latest_checkpoint(run: Path) -> Path | None:
    found = sorted(run.glob("checkpoint-*.pt"))
    return found[-1] if found else None


def train(emb: EmbeddingSet, source: Source, cfg: TrainConfig, run: Path, tokenizer: Tokenizer,
          resume: bool = False, training_data: str = "") -> Path:
    """Trains and returns the last checkpoint. `source` names GPT-2 (and the CLIP of the embeddings)."""
    rank, local_rank, world = _distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {world} processes")
    device = pick_device(local_rank, "training" if rank == 0 else None)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    mapper_options = dict(clip_length=cfg.clip_length, layers=cfg.mapper_layers) if cfg.mapper == "transformer" else {}
    models = build_models(source, cfg.mapper, cfg.prefix_length, cfg.normalize, cfg.dropout, **mapper_options)
    if models.embedding_dim != emb.embeddings.shape[1]:
        raise ValueError(f"{emb.folder}: {emb.embeddings.shape[1]}-d embeddings, CLIP {source.clip} gives "
                         f"{models.embedding_dim}")
    models.gpt.requires_grad_(not cfg.freeze_gpt)
    data = CaptionPairs(emb, emb.split("train"), tokenizer, cfg.max_caption_tokens, cfg.captions_per_image, cfg.seed)
    per_process = cfg.batch_size // world
    if world > 1:
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=cfg.shuffle, seed=cfg.seed)
    elif cfg.shuffle:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(cfg.seed))
    else:
        sampler = SequentialSampler(data)
    loader = DataLoader(data, batch_size=per_process, sampler=sampler, collate_fn=collate, drop_last=True)
    params = [p for p in models.clipcap.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    schedule = get_linear_schedule_with_warmup(optimizer, cfg.warmup, cfg.epochs * len(loader))
    start_epoch, step = 0, 0
    last = latest_checkpoint(run) if resume else None
    if last is not None:
        saved = read_checkpoint(last)
        models.clipcap.load_state_dict(checkpoint_models(saved, last, source).clipcap.state_dict())
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["scheduler"])
        start_epoch, step = saved["epoch"] + 1, saved["step"]
        if rank == 0:
            print(f"resuming from {last} (epoch {saved['epoch'] + 1} done)")
    loss_module = CaptionLoss(models).to(device).train()
    model = nn.parallel.DistributedDataParallel(loss_module) if world > 1 else loss_module
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    log_path = run / "loss.csv"
    kept = []
    if last is not None and log_path.exists():  # drop the rows of the interrupted epoch
        with open(log_path, newline="") as f:
            kept = [r for r in csv.reader(f) if r and r[0] != "step" and int(r[0]) <= step]
    checkpoint = last
    with open(log_path, "w", newline="") if rank == 0 else nullcontext() as log:
        writer = csv.writer(log) if log else None
        if writer:
            writer.writerows([["step", "epoch", "loss", "lr", "seconds"], *kept])
        began = time.time()
        for epoch in range(start_epoch, cfg.epochs):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            elif isinstance(sampler, RandomSampler):
                sampler.generator.manual_seed(cfg.seed + epoch)  # the same order when resumed
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0)
            for embeds, tokens, mask in bar:
                embeds, tokens, mask = embeds.to(device), tokens.to(device), mask.to(device)
                with autocast:
                    loss, mean = step_loss(model, embeds, tokens, mask, world)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                if writer:
                    writer.writerow([step, epoch + 1, f"{mean:.5f}", f"{schedule.get_last_lr()[0]:.3e}",
                                     f"{time.time() - began:.1f}"])
                bar.set_postfix(loss=f"{mean:.3f}")
            if rank == 0:
                checkpoint = run / f"checkpoint-{epoch + 1:03d}.pt"
                save_checkpoint(checkpoint, models, source, include_gpt=not cfg.freeze_gpt, epoch=epoch, step=step,
                                optimizer=optimizer.state_dict(), scheduler=schedule.state_dict(),
                                train_config=asdict(cfg), training_data=training_data)
                log.flush()
            if world > 1:
                dist.barrier()
    if rank == 0:
        plot_loss(log_path, run / "loss.png")
    if world > 1:
        dist.barrier()
    return checkpoint if checkpoint is not None else latest_checkpoint(run)


def plot_loss(csv_path: Path, png: Path) -> None:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps, losses = [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    with figure(png, (7, 4)) as ax:
        ax.plot(steps, losses, alpha=0.3, label="per step")
        ax.plot(steps[window - 1:], smooth, label=f"mean of {window}")
        ax.set(xlabel="step", ylabel="caption-token cross-entropy", title="ClipCap training loss")
