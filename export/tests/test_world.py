"""The synthetic world: what the captions say is what the pixels show."""

import json

import numpy as np
from skimage.measure import label

from clipcap_export.data import load_karpathy
from clipcap_export.world import BACKGROUNDS, COLORS, COUNT_WORDS, generate, scene


def nearest(rgb, palette: dict) -> str:
    return min(palette, key=lambda name: sum((int(a) - b) ** 2 for a, b in zip(rgb, palette[name], strict=True)))


def test_captions_name_the_background_colour_shape_count():
    rng = np.random.default_rng(3)
    for _ in range(60):
        image, captions, truth = scene(rng)
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
                assert "a" in words or "an" in words or "one" in words, c
            else:
                assert COUNT_WORDS[count] in words, (c, count)
        assert (truth["background"], truth["color"], truth["count"]) == (background, color, count)


def test_generation_is_seeded_and_karpathy_formatted(tmp_path):
    a, b = generate(tmp_path / "a", 4, 1, 2, seed=5), generate(tmp_path / "b", 4, 1, 2, seed=5)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/images/00003.png").read_bytes() == (tmp_path / "b/images/00003.png").read_bytes()
    records = load_karpathy(a, tmp_path / "a")
    assert [r.split for r in records] == ["train"] * 4 + ["val"] + ["test"] * 2
    assert all(r.path.is_file() and len(r.captions) == 5 for r in records)
    assert json.loads(a.read_text())["images"][0]["sentences"][0]["raw"] == records[0].captions[0]


def test_every_caption_parses_back_to_the_recorded_attributes():
    from clipcap_export.world import parse

    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(300):
        _, captions, truth = scene(rng)
        assert all(parse(c) == truth for c in captions), (captions, truth)
        seen.add(truth["position"])
    assert seen == {None, "on the left", "on the right", "at the top", "at the bottom", "in the middle"}
    assert parse("a picture of a orange triangle in the middle on a blue background.")["color"] == "orange"
    assert parse("two red circles on a blue background") is None  # no full stop: not the grammar
    assert parse("a red blob somewhere.") is None


def test_captions_are_read_attribute_by_attribute():
    from clipcap_export.world import read

    assert read("a picture of an orange triangle at the middle on a blue background.") == dict(
        background="blue", color="orange", shape="triangle", count=1, position="other")
    assert read("three white squares against a green background.") == dict(
        background="green", color="white", shape="square", count=3, position=None)
    assert read("nothing here.") == dict(background=None, color=None, shape=None, count=None, position=None)


def test_captions_use_the_right_article():
    from clipcap_export.world import captions

    assert captions(1, "orange", "circle", "gray", "on the left")[0] == \
        "an orange circle on the left on a gray background."
    assert captions(2, "red", "square", "white", None)[1] == "a white background with two red squares."


def test_attribute_scores_and_confusions():
    from clipcap_export.attributes import caption_accuracy

    truths = [dict(background="gray", color="red", shape="circle", count=1, position="on the left"),
              dict(background="blue", color="white", shape="square", count=2, position=None)]
    said = ["a red circle on the right on a gray background.", "a blue background with a white square at the middle."]
    report = caption_accuracy(truths, said)
    # The second caption follows no template, yet its background, colour and shape are read.
    assert report["counts"] == dict(background=[2, 2], color=[2, 2], shape=[2, 2], count=[1, 2], position=[0, 1])
    assert (report["exact"], report["parsed"]) == (0, 1)
    assert report["confusion"]["position"] == {"on the left": {"on the right": 1}}
    assert report["confusion"]["count"] == {"1": {"1": 1}, "2": {"1": 1}}


def test_zero_shot_picks_the_closest_caption():
    from clipcap_export.attributes import zero_shot
    from clipcap_export.world import captions

    truth = dict(background="gray", color="red", shape="circle", count=1, position="at the top")
    target = captions(1, "red", "circle", "gray", "at the top")[0]

    def embed(texts):  # a text tower that knows exactly one caption
        return np.array([[1.0, 0.0] if t == target else [0.0, 1.0] for t in texts])

    report = zero_shot([truth], np.array([[1.0, 0.0]]), embed)
    assert report["accuracy"] == dict(background=1.0, color=1.0, shape=1.0, count=1.0, position=1.0)
    wrong = zero_shot([truth], np.array([[0.0, 1.0]]), embed)
    assert wrong["accuracy"]["position"] < 1.0
