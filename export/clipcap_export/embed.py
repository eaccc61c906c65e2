"""CLIP image embeddings of a data set, computed once and cached: training reads them instead of
running CLIP on every epoch (CLIP is frozen in ClipCap).

Work is done in chunks written as they finish, so an interrupted run resumes where it stopped; the
chunks are joined into `embeddings.npy` at the end. Images are decoded by DataLoader workers and
embedded in batches on CUDA when there is one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data import EmbeddingSet, Record, write_index
from .models import Source, load_clip, pick_device
from .reference import load_image, preprocess

CHUNK = 2048


class _Images(Dataset):
    def __init__(self, records: list[Record], size: int) -> None:
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        return preprocess(load_image(self.records[i].path), self.size)


@torch.no_grad()
def embed(records: list[Record], source: Source, out: Path, batch_size: int = 256, workers: int = 4) -> EmbeddingSet:
    clip = load_clip(source)
    dev = pick_device(cpu_work="running")
    clip.to(dev)
    size = clip.config.vision_config.image_size
    chunks = out / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    write_index(out, records, source.clip, size)  # first: a resumed run checks it continues the same work
    if (out / "embeddings.npy").exists():
        return EmbeddingSet(out)
    starts = range(0, len(records), CHUNK)
    for start in tqdm(starts, desc="embed", unit="chunk"):
        path = chunks / f"{start // CHUNK:05d}.npy"
        if path.exists():
            continue  # done by an earlier, interrupted run
        part = records[start:start + CHUNK]
        loader = DataLoader(_Images(part, size), batch_size=batch_size, num_workers=workers)
        rows = [clip.get_image_features(pixel_values=b.to(dev)).pooler_output.float().cpu().numpy() for b in loader]
        np.save(path.with_suffix(".part.npy"), np.concatenate(rows))
        path.with_suffix(".part.npy").rename(path)
    np.save(out / "embeddings.npy", np.concatenate([np.load(chunks / f"{s // CHUNK:05d}.npy") for s in starts]))
    shutil.rmtree(chunks)
    return EmbeddingSet(out)
