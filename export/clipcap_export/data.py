"""Captioning data sets: COCO with the Karpathy split, any COCO-format captions file, and the cached
CLIP embeddings that training reads.

Every source becomes a list of `Record`s (an image path, its split, its captions). The Karpathy split
file (`dataset_coco.json`) is also the format the demo world writes, so one reader serves both.
"""

from __future__ import annotations

import json
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# COCO 2014 and Karpathy's split, for users with internet access (`clipcap-export download-coco`).
COCO_URLS = {
    "train2014.zip": "http://images.cocodataset.org/zips/train2014.zip",
    "val2014.zip": "http://images.cocodataset.org/zips/val2014.zip",
    "annotations_trainval2014.zip": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    "caption_datasets.zip": "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
}
SPLITS = ("train", "val", "test")


@dataclass
class Record:
    image_id: int
    path: Path
    split: str  # train | val | test
    captions: list[str]
    # What the image shows, where the data set records it (the demo world: background, color, shape,
    # count, position), for scoring captions attribute by attribute.
    attributes: dict | None = None


def normalize_caption(text: str) -> str:
    """One line, single spaces, ending with "." (ClipCap stops generating at ".")."""
    text = " ".join(text.split())
    return text if text.endswith(".") else text + "."


def load_karpathy(split_file: Path, image_root: Path) -> list[Record]:
    """Karpathy's `dataset_coco.json` (or the demo's `dataset.json`): "restval" images count as train,
    as in the ClipCap paper and most COCO captioning work."""
    data = json.loads(split_file.read_text(encoding="utf-8"))
    records = []
    for i, img in enumerate(data["images"]):
        split = "train" if img["split"] == "restval" else img["split"]
        if split not in SPLITS:
            raise ValueError(f"{split_file}: image {img.get('filename')} has unknown split {img['split']!r}")
        records.append(Record(image_id=int(img.get("cocoid", img.get("imgid", i))),
                              path=image_root / img.get("filepath", "") / img["filename"], split=split,
                              captions=[normalize_caption(s["raw"]) for s in img["sentences"]],
                              attributes=img.get("attributes")))
    return records


def load_coco_captions(captions_file: Path, image_dir: Path, val_fraction: float = 0.0, test_fraction: float = 0.0,
                       seed: int = 0) -> list[Record]:
    """A COCO-format captions file (`images` with `id` and `file_name`, `annotations` with `image_id`
    and `caption`), how users bring their own data; images are split at random (seeded) into val and
    test by the given fractions, the rest is train."""
    data = json.loads(captions_file.read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    for a in data["annotations"]:
        captions.setdefault(int(a["image_id"]), []).append(normalize_caption(a["caption"]))
    images = [img for img in data["images"] if int(img["id"]) in captions]
    draw = np.random.default_rng(seed).random(len(images))
    split = ["val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train" for u in draw]
    return [Record(image_id=int(img["id"]), path=image_dir / img["file_name"], split=s,
                   captions=captions[int(img["id"])]) for img, s in zip(images, split, strict=True)]


def download_coco(root: Path) -> None:
    """Downloads and unpacks COCO 2014 images, annotations and Karpathy's split into `root` (~20 GB)."""
    from tqdm import tqdm

    root.mkdir(parents=True, exist_ok=True)
    for name, url in COCO_URLS.items():
        target = root / name
        if not target.exists():
            with urllib.request.urlopen(url) as response, open(target.with_suffix(".part"), "wb") as out:
                total = int(response.headers.get("Content-Length", 0))
                with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            target.with_suffix(".part").rename(target)
        with zipfile.ZipFile(target) as z:
            z.extractall(root)


class EmbeddingSet:
    """CLIP embeddings of a data set's images, cached in a folder by `clipcap-export embed`:
    `index.json` (records, CLIP source, embedding size) and `embeddings.npy` [images, dim]."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        self.clip: str = index["clip"]
        self.image_size: int = index["image_size"]
        self.records = [Record(r["image_id"], Path(r["path"]), r["split"], r["captions"], r.get("attributes"))
                        for r in index["records"]]
        self.embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
        if len(self.embeddings) != len(self.records):
            raise ValueError(f"{folder}: {len(self.embeddings)} embeddings for {len(self.records)} records")

    def split(self, name: str) -> list[int]:
        """Row numbers of the records in split `name`."""
        return [i for i, r in enumerate(self.records) if r.split == name]


def write_index(folder: Path, records: list[Record], clip: str, image_size: int) -> None:
    """Writes `index.json`; refuses when a different one is there (an interrupted run of other work)."""
    rows = [dict(image_id=r.image_id, path=str(r.path), split=r.split, captions=r.captions,
                 **({} if r.attributes is None else dict(attributes=r.attributes))) for r in records]
    text = json.dumps(dict(clip=clip, image_size=image_size, records=rows))
    path = folder / "index.json"
    if path.exists() and path.read_text(encoding="utf-8") != text:
        raise ValueError(f"{path}: holds another data set or CLIP; use another output folder or delete it")
    path.write_text(text, encoding="utf-8")
