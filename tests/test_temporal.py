"""The temporal-consistency metric: same digit classes in the first and last frame, by a multi-label classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tarflow.metrics.temporal import (consistent_fraction, digit_classifier, digit_targets, frame_accuracy,
                                      train_digit_classifier, unrelated_fraction)

pytestmark = pytest.mark.usefixtures("one_thread")


class MarkedDigits(nn.Module):
    """A stand-in classifier: a frame shows the digit classes written in its pixels (0, 0) and (0, 1)."""

    def to_input(self, frames):
        return frames.long()

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10)
        rows = torch.arange(x.shape[0])
        logits[rows, x[:, 0, 0, 0] % 10] += 1.0
        logits[rows, x[:, 0, 0, 1] % 10] += 1.0
        return logits


def marked_clips(digits_first, digits_last, frames=3):
    clips = torch.zeros(len(digits_first), frames, 1, 4, 4, dtype=torch.uint8)
    for i, (first, last) in enumerate(zip(digits_first, digits_last)):
        clips[i, 0, 0, 0, :2] = torch.tensor(first)
        clips[i, -1, 0, 0, :2] = torch.tensor(last)
    return clips


def test_consistency_compares_the_sets_of_first_and_last_digits():
    first = [(1, 2), (3, 4), (5, 6), (7, 8)]
    last = [(2, 1), (3, 4), (5, 9), (0, 8)]  # same set (swapped), same, one changed, one changed
    assert consistent_fraction(MarkedDigits(), marked_clips(first, last), 2) == 0.5
    assert consistent_fraction(MarkedDigits(), marked_clips(first, first), 2) == 1.0


def test_unrelated_pairs_take_the_last_frame_of_the_next_clip():
    first = [(1, 2), (3, 4), (3, 4), (7, 8)]
    # pairs: clip 0's first with clip 1's last (3, 4): no; 1 with 2's (3, 4): yes; 2 with 3's (7, 8): no; 3 with 0's
    assert unrelated_fraction(MarkedDigits(), marked_clips(first, first), 2) == 0.25


def test_digit_targets_are_multi_hot():
    targets = digit_targets(torch.tensor([[3, 7], [2, 2]]))
    assert targets.sum(1).tolist() == [2.0, 1.0] and targets[0, 3] == targets[0, 7] == targets[1, 2] == 1


def test_classifier_learns_which_digits_a_frame_shows():
    """Three 'digits' of 28x28 textures (horizontal stripes, vertical stripes, a solid square), two pasted per frame
    at random places of a 40x40 canvas, fresh every step: the classifier gets the pair right on nearly every frame
    of clips rendered the same way."""
    from tarflow.data.moving_mnist import render

    digits = np.zeros((3, 28, 28), dtype=np.uint8)
    digits[0, ::4] = 255
    digits[1, :, ::4] = 255
    digits[2, 9:19, 9:19] = 255
    classifier = train_digit_classifier(torch.from_numpy(digits), torch.arange(3), 40, steps=200, batch_size=32,
                                        lr=5e-3)
    rng = np.random.default_rng(1)
    chosen = np.stack([rng.permutation(3)[:2] for _ in range(60)])
    corners = rng.integers(0, 13, (60, 2, 2, 2))
    clips = torch.from_numpy(render(digits[chosen], corners, 40))
    labels = torch.from_numpy(chosen)
    assert frame_accuracy(classifier, clips, labels) >= 0.9
    assert consistent_fraction(classifier, clips, 2) >= 0.9


def test_digit_classifier_is_trained_once_per_setting_and_cached(tmp_path):
    """The second call with the same digits and settings loads the first one's classifier (same weights); another
    step count trains anew; a damaged cache file is trained again and replaced."""
    digits = torch.randint(0, 256, (6, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(6) % 3
    frames = torch.randint(0, 256, (4, 1, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)

    def fitted(steps):
        return digit_classifier(digits, labels, 32, 2, steps=steps, cache_dir=tmp_path)

    trained, info = fitted(3)
    loaded, again = fitted(3)
    assert not info["cached"] and again["cached"] and again["path"] == info["path"]
    with torch.no_grad():
        assert torch.equal(trained(trained.to_input(frames)), loaded(loaded.to_input(frames)))
    assert not fitted(4)[1]["cached"]
    Path(info["path"]).write_bytes(b"not a classifier")
    assert not fitted(3)[1]["cached"]  # trained again and replaced
    assert fitted(3)[1]["cached"]
