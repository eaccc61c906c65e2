"""The demo CLIP's training aids: hard-negative pools, shared positives, shift augmentation."""

import numpy as np
import torch

from clipcap_export.clip_train import _batches, _hard_pools, _shifted, _targets
from clipcap_export.world import ATTRIBUTES, scene


def _truths(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [scene(rng)[2] for _ in range(n)]


def test_hard_pools_differ_in_their_attribute_and_agree_on_the_others():
    truths = _truths(600, 1)
    pools = _hard_pools(truths)
    assert set(pools) == set(ATTRIBUTES)
    for attribute, groups in pools.items():
        for members in groups:
            assert len({str(truths[i][attribute]) for i in members}) > 1
            for other in ATTRIBUTES:
                if other not in (attribute, "position"):
                    assert len({str(truths[i][other]) for i in members}) == 1, (attribute, other)
        if attribute == "position":
            assert all(truths[i]["count"] == 1 for members in groups for i in members)


def test_batches_are_distinct_indices_with_hard_blocks():
    truths = _truths(600, 2)
    batches = _batches(len(truths), 64, truths, np.random.default_rng(0))
    for _ in range(20):
        batch = next(batches)
        assert len(batch) == 64 and len(set(batch.tolist())) == 64


def test_targets_share_positives_between_twins():
    t = _targets(torch.tensor([0, 1, 0, 2]))
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[0, 2] == t[0, 0] == 0.5 and t[1, 1] == 1.0


def test_shifts_move_without_flipping():
    pixels = torch.zeros(1, 3, 16, 16)
    pixels[0, :, 2, 3] = 1.0  # a dot near the top left
    for seed in range(10):
        moved = _shifted(pixels, 2, np.random.default_rng(seed))
        y, x = (moved[0, 0] == 1.0).nonzero()[0].tolist()
        assert abs(y - 2) <= 2 and abs(x - 3) <= 2
    assert torch.equal(_shifted(pixels, 0, np.random.default_rng(0)), pixels)
