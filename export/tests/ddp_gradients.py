"""Run by test_train.py under torchrun: one DDP backward pass on this rank's share of a fixed batch
(DistributedSampler's interleaved split); rank 0 saves the resulting gradients to argv[1]."""

import sys

import torch
import torch.distributed as dist

from clipcap_export.models import Source, build_models
from clipcap_export.train import CaptionLoss, collate, step_loss


def batch():
    """8 captions of different lengths with fixed random embeddings (tiny CLIP's 32 dimensions)."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, generator=g), torch.randint(0, 50257, (3 + 2 * i % 7,), generator=g)) for i in range(8)]


def gradients(shard, world: int, wrap=lambda m: m) -> dict:
    models = build_models(Source.random("tiny"), dropout=0.0)
    module = wrap(CaptionLoss(models).train())
    loss, _ = step_loss(module, *collate(shard), world)
    loss.backward()
    return {n: p.grad.clone() for n, p in models.clipcap.named_parameters() if p.grad is not None}


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    grads = gradients(batch()[rank::world], world, lambda m: torch.nn.parallel.DistributedDataParallel(m))
    if rank == 0:
        torch.save(grads, sys.argv[1])
    dist.destroy_process_group()
