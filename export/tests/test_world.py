"""The synthetic world: what the captions say is what the pixels show."""

import json

import numpy as np
from skimage.measure import label

from clipcap_export.data import load_karpathy
from clipcap_export.world import BACKGROUNDS, COLORS, COUNT_WORDS, generate, scene


def nearest(rgb, palette: dict) -> str:
    return min(palette, key=lambda name: sum((int(a) - b) ** 2 for a, b in zip(rgb, palette[name])))


def test_captions_name_the_background_colour_shape_count():
    rng = np.random.default_rng(3)
    for _ in range(60):
        image, captions = scene(rng)
        pixels = np.asarray(image).astype(int)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        bg_rgb = np.median(border, axis=0)
        background = nearest(bg_rgb, BACKGROUNDS)
        shape_mask = np.abs(pixels - bg_rgb).sum(-1) > 60
        color = nearest(np.median(pixels[shape_mask], axis=0), COLORS)
        count = label(shape_mask).max()
        assert len(captions) == 5 and all(c.endswith(".") for c in captions)
        for c in captions:
            assert f"{background} background" in c, (c, background)
            assert f" {color} " in f" {c} ", (c, color)
            words = c.split()
            if count == 1:
                assert "a" in words or "one" in words, c
            else:
                assert COUNT_WORDS[count] in words, (c, count)


def test_generation_is_seeded_and_karpathy_formatted(tmp_path):
    a, b = generate(tmp_path / "a", 4, 1, 2, seed=5), generate(tmp_path / "b", 4, 1, 2, seed=5)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/images/00003.png").read_bytes() == (tmp_path / "b/images/00003.png").read_bytes()
    records = load_karpathy(a, tmp_path / "a")
    assert [r.split for r in records] == ["train"] * 4 + ["val"] + ["test"] * 2
    assert all(r.path.is_file() and len(r.captions) == 5 for r in records)
    assert json.loads(a.read_text())["images"][0]["sentences"][0]["raw"] == records[0].captions[0]


def test_scene_keys_are_read_back_from_any_caption():
    from clipcap_export.world import scene_key

    rng = np.random.default_rng(4)
    keys = set()
    for _ in range(60):
        _, captions = scene(rng)
        found = {scene_key(c) for c in captions}
        assert len(found) == 1, captions
        keys |= found
    assert {k[2] for k in keys} == {1, 2, 3} and len({k[0] for k in keys}) > 3
