"""A small synthetic captioning world: coloured shapes on coloured backgrounds, with captions.

Each image shows one, two or three shapes of one kind and colour on a plain (slightly noisy)
background; a single shape sits in a named place. Five paraphrased captions per image name exactly
what is drawn ("two red circles on a blue background."), so a model that captions it right has seen
colour, shape, count, position and background. Written as images plus a Karpathy-style split file,
the format `clipcap-export embed` reads for COCO, with each image's attributes beside its captions;
`parse` reads the attributes back from a caption, so captions can be scored attribute by attribute.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
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


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions(count: int, color: str, shape: str, background: str, place: str | None) -> list[str]:
    bg = f"{article(background)} {background} background"
    if count == 1:
        thing = f"{color} {shape} {place}"
        one = f"{article(color)} {thing}"
        return [f"{one} on {bg}.", f"{bg} with {one}.", f"there is {one} on {bg}.",
                f"one {thing} against {bg}.", f"a picture of {one} on {bg}."]
    things = f"{COUNT_WORDS[count]} {color} {shape}s"
    return [f"{things} on {bg}.", f"{bg} with {things}.", f"there are {things} on {bg}.",
            f"{things} against {bg}.", f"a picture of {things} on {bg}."]


ATTRIBUTES = ("background", "color", "shape", "count", "position")


def attributes(count: int, color: str, shape: str, background: str, place: str | None) -> dict:
    """What an image shows, as `generate` records it: `position` only for a single shape (else None)."""
    return dict(background=background, color=color, shape=shape, count=count, position=place)


# The captions' grammar, read back: each template of `captions` as a pattern.
_ONE = (r"an? (?P<color>\w+) (?P<shape>\w+) "
        r"(?P<position>on the left|on the right|at the top|at the bottom|in the middle)")
_ONE_BARE = _ONE.removeprefix("an? ")
_MANY = r"(?P<count>two|three) (?P<color>\w+) (?P<shape>\w+)s"
_BG = r"an? (?P<background>\w+) background"
_PATTERNS = [re.compile(t.format(one=_ONE, bare=_ONE_BARE, many=_MANY, bg=_BG)) for t in (
    r"{one} on {bg}\.", r"{bg} with {one}\.", r"there is {one} on {bg}\.", r"one {bare} against {bg}\.",
    r"a picture of {one} on {bg}\.",
    r"{many} on {bg}\.", r"{bg} with {many}\.", r"there are {many} on {bg}\.", r"{many} against {bg}\.",
    r"a picture of {many} on {bg}\.")]
_COUNTS = {word: n for n, word in COUNT_WORDS.items()}


def parse(caption: str) -> dict | None:
    """The attributes a caption of this world's grammar states (either article accepted, words not
    checked against the palette), or None when it follows none of the templates."""
    text = " ".join(caption.lower().split())
    for pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            found = m.groupdict()
            count = _COUNTS[found["count"]] if found.get("count") else 1
            return dict(background=found["background"], color=found["color"], shape=found["shape"], count=count,
                        position=found.get("position"))
    return None


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, ...]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=fill)


def scene(rng: np.random.Generator) -> tuple[Image.Image, list[str], dict]:
    """One random image, its five captions and its attributes."""
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
    return image, captions(count, color, shape, background, place), attributes(count, color, shape, background, place)


def generate(out: Path, train: int, val: int, test: int, seed: int = 0) -> Path:
    """Writes out/images/*.png and out/dataset.json (Karpathy format); returns the split file."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    splits = ["train"] * train + ["val"] * val + ["test"] * test
    # Scenes are drawn in order (one random stream); PNG encoding runs on two threads (zlib releases
    # the GIL), uncompressed: the backgrounds' noise leaves zlib little to gain (147 against 89 KB an
    # image) at twice the time, which was most of the world's generation.
    with ThreadPoolExecutor(2) as pool:
        saved = []
        for i, split in enumerate(splits):
            image, texts, truth = scene(rng)
            name = f"{i:05d}.png"
            saved.append(pool.submit(image.save, out / "images" / name, compress_level=0))
            entries.append(dict(imgid=i, cocoid=i, filepath="images", filename=name, split=split,
                                sentences=[dict(raw=t) for t in texts], attributes=truth))
        for future in saved:
            future.result()  # a failed write fails the generation
    split_file = out / "dataset.json"
    split_file.write_text(json.dumps(dict(dataset="clipcap-demo-world", images=entries)), encoding="utf-8")
    for split in ("val", "test"):  # COCO-format annotations, what `clipcap eval` and `clipcap score` read
        write_coco(out / f"coco-{split}.json", [e for e in entries if e["split"] == split], "images/")
    return split_file


def write_coco(path: Path, entries: list[dict], prefix: str = "") -> None:
    """COCO-format annotations of Karpathy-style `entries` (file names `prefix` + filename)."""
    images = [dict(id=e["cocoid"], file_name=prefix + e["filename"]) for e in entries]
    annotations = [dict(image_id=e["cocoid"], id=5 * e["cocoid"] + k, caption=s["raw"])
                   for e in entries for k, s in enumerate(e["sentences"])]
    path.write_text(json.dumps(dict(images=images, annotations=annotations), indent=1) + "\n", encoding="utf-8")


_READ_BACKGROUND = re.compile(r"\b(\w+) background\b")
_READ_THING = re.compile(rf"\b(an?|one|two|three) (\w+) ({'|'.join(SHAPES)})s?\b")
_READ_PLACE = re.compile(rf"\b({'|'.join(PLACES)})\b")


def read(caption: str) -> dict:
    """What a caption says of each attribute, read word by word rather than template by template, so
    that one odd phrase ("at the middle") costs only its own attribute. A value is None where the
    caption does not say it recognisably; a single shape without a known place has position "other"."""
    text = " ".join(caption.lower().split())
    background, thing, place = _READ_BACKGROUND.search(text), _READ_THING.search(text), _READ_PLACE.search(text)
    count = None if thing is None else _COUNTS.get(thing.group(1), 1)
    position = (place.group(1) if place else "other") if count == 1 else None
    return dict(background=background and background.group(1), color=thing and thing.group(2),
                shape=thing and thing.group(3), count=count, position=position)
