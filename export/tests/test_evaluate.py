"""Scoring with pycocoevalcap: right captions score high, wrong ones low, and what cannot be computed
offline (SPICE's Stanford models) is said, not silently left out."""

from clipcap_export.evaluate import METRICS, score, table

REFERENCES = {
    1: ["two red circles on a blue background.", "a blue background with two red circles."],
    2: ["a green square at the top on a white background.",
        "there is a green square at the top on a white background."],
}


def test_right_captions_score_higher_than_wrong_ones():
    right, notes = score(REFERENCES, {1: REFERENCES[1][0], 2: REFERENCES[2][1]})
    wrong, _ = score(REFERENCES, {1: "three yellow triangles on a black background.", 2: "a dog on a bench."})
    assert abs(right["BLEU-1"] - 1.0) < 1e-6 and abs(right["BLEU-4"] - 1.0) < 1e-6
    for m in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert right[m] > wrong[m], m
    assert set(right) | {"SPICE"} == set(METRICS)
    assert "SPICE" in right or any("SPICE" in n for n in notes)
    assert "| BLEU-1 |" in table(right)
