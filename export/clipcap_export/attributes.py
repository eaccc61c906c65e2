"""Scoring captions of the demo world attribute by attribute, and what CLIP itself sees of each.

BLEU rewards the words a caption shares with its references, and the world's templates share most of
them, so a caption with the wrong position or count still scores high. Here each caption is read back
attribute by attribute (`world.read`) and compared with the attributes the generator recorded:
background, shape colour, shape, count, and position (single shapes only), with the confusion matrices
of position and count; how many captions follow one of the world's templates exactly (`world.parse`)
is counted too.

The zero-shot probe asks the same of CLIP alone: for each image and attribute, the captions that
differ from the true one in that attribute only (every value the world can draw) are embedded with
CLIP's text tower, and the one closest to the image embedding is CLIP's answer. Where CLIP answers
right and the caption does not, the mapper or the decoder lost what the image encoder saw; where CLIP
is wrong too, the image encoder never saw it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .world import ATTRIBUTES, BACKGROUNDS, COLORS, COUNT_WORDS, PLACES, SHAPES, captions, parse, read

UNREAD = "unread"  # the caption names no count recognisably
NO_POSITION = "none"  # the caption names several shapes (or none recognisably), so no position


def _scored(attribute: str, truth: dict) -> bool:
    """Position is an attribute of single shapes only."""
    return attribute != "position" or truth["position"] is not None


def caption_accuracy(truths: list[dict], texts: list[str]) -> dict:
    """Per-attribute accuracy of `texts` (one caption per image) against the images' `truths`, the
    share of captions right in every attribute, and the confusion matrices of position and count
    ({truth: {caption's value: images}})."""
    correct = {a: 0 for a in ATTRIBUTES}
    total = {a: 0 for a in ATTRIBUTES}
    confusion: dict[str, dict[str, dict[str, int]]] = {"position": {}, "count": {}}
    exact = parsed = 0
    for truth, text in zip(truths, texts, strict=True):
        said = read(text)
        parsed += parse(text) is not None
        right = True
        for a in ATTRIBUTES:
            if not _scored(a, truth):
                continue
            total[a] += 1
            ok = said[a] == truth[a]
            correct[a] += ok
            right &= ok
        exact += right
        for a in confusion:
            if _scored(a, truth):
                value = str(said[a]) if said[a] is not None else UNREAD if a == "count" else NO_POSITION
                row = confusion[a].setdefault(str(truth[a]), {})
                row[value] = row.get(value, 0) + 1
    return dict(images=len(truths), parsed=parsed, exact=exact,
                accuracy={a: correct[a] / total[a] for a in ATTRIBUTES if total[a]},
                counts={a: [correct[a], total[a]] for a in ATTRIBUTES}, confusion=confusion)


def _candidates(truth: dict, attribute: str) -> dict[str, list[str]]:
    """For each value the world can draw for `attribute`, the canonical captions of the image with only
    that attribute changed (a single shape gets a position: every position is a candidate caption)."""
    values = {
        "background": [b for b in BACKGROUNDS if b != truth["color"]],
        "color": [c for c in COLORS if c != truth["background"]],
        "shape": list(SHAPES),
        "count": [1, *COUNT_WORDS],
        "position": list(PLACES),
    }[attribute]
    out = {}
    for value in values:
        a = dict(truth, **{attribute: value})
        places = [a["position"]] if a["count"] == 1 and a["position"] else list(PLACES) if a["count"] == 1 else [None]
        out[str(value)] = [captions(a["count"], a["color"], a["shape"], a["background"], p)[0] for p in places]
    return out


def zero_shot(truths: list[dict], image_embeds: np.ndarray, embed_texts: Callable[[list[str]], np.ndarray]) -> dict:
    """CLIP's zero-shot accuracy per attribute: `image_embeds` [images, dim] (raw), `embed_texts` the
    text tower (texts -> [texts, dim]). A value's score is its best caption's cosine similarity."""
    images = image_embeds / np.linalg.norm(image_embeds, axis=1, keepdims=True)
    plans = [{a: _candidates(t, a) for a in ATTRIBUTES if _scored(a, t)} for t in truths]
    texts = sorted({c for plan in plans for values in plan.values() for cs in values.values() for c in cs})
    embedded = embed_texts(texts)
    embedded = embedded / np.linalg.norm(embedded, axis=1, keepdims=True)
    row = {text: i for i, text in enumerate(texts)}
    correct = {a: 0 for a in ATTRIBUTES}
    total = {a: 0 for a in ATTRIBUTES}
    confusion: dict[str, dict[str, int]] = {}
    for truth, plan, image in zip(truths, plans, images, strict=True):
        for a, values in plan.items():
            scores = {v: max(float(embedded[row[c]] @ image) for c in cs) for v, cs in values.items()}
            best = max(scores, key=scores.get)
            total[a] += 1
            correct[a] += best == str(truth[a])
            if a == "position":
                cell = confusion.setdefault(str(truth[a]), {})
                cell[best] = cell.get(best, 0) + 1
    return dict(images=len(truths), accuracy={a: correct[a] / total[a] for a in ATTRIBUTES if total[a]},
                counts={a: [correct[a], total[a]] for a in ATTRIBUTES}, confusion=dict(position=confusion))


def markdown(report: dict) -> str:
    """The attribute tables of an evaluation report (`attributes`, and `zero_shot` when present)."""
    captioned, probe = report["attributes"], report.get("zero_shot")
    lines = ["| attribute | captions right | CLIP zero-shot |" if probe else "| attribute | captions right |",
             "|---|---|---|" if probe else "|---|---|"]
    for a in ATTRIBUTES:
        right, total = captioned["counts"][a]
        if not total:
            continue
        cell = f"{100 * right / total:.1f}% ({right}/{total})"
        if probe:
            p_right, p_total = probe["counts"][a]
            cell += f" | {100 * p_right / p_total:.1f}% ({p_right}/{p_total})"
        lines.append(f"| {a} | {cell} |")
    lines.append(f"\nCaptions right in every attribute: {captioned['exact']}/{captioned['images']}; "
                 f"captions that follow one of the world's templates: {captioned['parsed']}/{captioned['images']}.\n")
    for name, matrix in captioned["confusion"].items():
        lines += [f"\nConfusion of {name} (rows: the image, columns: the caption):\n", _matrix(matrix, _ORDER[name])]
    if probe:
        lines += ["\nConfusion of position by CLIP zero-shot (rows: the image, columns: CLIP's choice):\n",
                  _matrix(probe["confusion"]["position"], _ORDER["position"])]
    return "\n".join(lines) + "\n"


_ORDER = {"position": list(PLACES), "count": ["1", "2", "3"]}


def _matrix(matrix: dict[str, dict[str, int]], order: list[str]) -> str:
    rows = [r for r in order if r in matrix]
    columns = rows + sorted({c for r in matrix.values() for c in r} - set(rows))
    out = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    out += [f"| {r} | " + " | ".join(str(matrix[r].get(c, 0)) for c in columns) + " |" for r in rows]
    return "\n".join(out)
