"""A small synthetic captioning world: coloured shapes on coloured backgrounds, with captions.

Each image shows one, two or three shapes of one kind and colour on a plain (slightly noisy)
background; a single shape sits in a named place. Five paraphrased captions per image name exactly
what is drawn ("two red circles on a blue background."), so a model that captions it right has seen
colour, shape, count, position and background. Written as images plus a Karpathy-style split file,
the format `clipcap-export embed` reads for COCO.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 224
COLORS = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 75, 215), "yellow": (235, 205, 40),
    "white": (245, 245, 245), "black": (25, 25, 25), "purple": (135, 50, 170), "orange": (240, 135, 30),
}
BACKGROUNDS = {"white": COLORS["white"], "black": COLORS["black"], "gray": (128, 128, 128),
               "blue": COLORS["blue"], "green": COLORS["green"], "yellow": COLORS["yellow"]}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {2: "two", 3: "three"}
# Where a single shape sits: the name, and the range of its centre (x, y) in pixels.
PLACES = {
    "on the left": ((40, 70), (70, 154)), "on the right": ((154, 184), (70, 154)),
    "at the top": ((70, 154), (40, 70)), "at the bottom": ((70, 154), (154, 184)),
    "in the middle": ((97, 127), (97, 127)),
}


def captions(count: int, color: str, shape: str, background: str, place: str | None) -> list[str]:
    bg = f"a {background} background"
    if count == 1:
        thing = f"{color} {shape} {place}"
        return [f"a {thing} on {bg}.", f"{bg} with a {thing}.", f"there is a {thing} on {bg}.",
                f"one {thing} against {bg}.", f"a picture of a {thing} on {bg}."]
    things = f"{COUNT_WORDS[count]} {color} {shape}s"
    return [f"{things} on {bg}.", f"{bg} with {things}.", f"there are {things} on {bg}.",
            f"{things} against {bg}.", f"a picture of {things} on {bg}."]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=fill)


def scene(rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    """One random image and its five captions."""
    background = rng.choice(list(BACKGROUNDS))
    color = rng.choice([c for c in COLORS if COLORS[c] != BACKGROUNDS[background]])
    shape = rng.choice(SHAPES)
    count = int(rng.choice([1, 2, 3]))
    base = np.array(BACKGROUNDS[background], dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 6, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    place = None
    if count == 1:
        place = rng.choice(list(PLACES))
        (x0, x1), (y0, y1) = PLACES[place]
        centres = [(rng.uniform(x0, x1), rng.uniform(y0, y1))]
    else:
        centres = []
        while len(centres) < count:  # rejection sampling: shapes do not overlap
            c = (rng.uniform(35, SIZE - 35), rng.uniform(35, SIZE - 35))
            if all((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2 > 72 ** 2 for o in centres):
                centres.append(c)
    for cx, cy in centres:
        fill = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + rng.integers(-15, 16, 3), 0, 255))
        _draw(draw, shape, cx, cy, rng.uniform(20, 31), fill)
    return image, captions(count, color, shape, background, place)


def generate(out: Path, train: int, val: int, test: int, seed: int = 0) -> Path:
    """Writes out/images/*.png and out/dataset.json (Karpathy format); returns the split file."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    splits = ["train"] * train + ["val"] * val + ["test"] * test
    for i, split in enumerate(splits):
        image, texts = scene(rng)
        name = f"{i:05d}.png"
        image.save(out / "images" / name)
        entries.append(dict(imgid=i, cocoid=i, filepath="images", filename=name, split=split,
                            sentences=[dict(raw=t) for t in texts]))
    split_file = out / "dataset.json"
    split_file.write_text(json.dumps(dict(dataset="clipcap-demo-world", images=entries)), encoding="utf-8")
    return split_file


def scene_key(caption: str) -> tuple[str, str, int]:
    """Background, shape colour and count that a caption of this world names: scenes with the same key
    differ only in shape or position (hard negatives for contrastive training). Background and colour
    always differ (`scene` never draws shapes in the background's colour)."""
    words = caption.rstrip(".").split()
    background = words[words.index("background") - 1]
    color = next(w for w in words if w in COLORS and w != background)
    count = next((n for n, w in COUNT_WORDS.items() if w in words), 1)
    return background, color, count
