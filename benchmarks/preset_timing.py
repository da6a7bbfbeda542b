"""What the preset benchmarks share: an image preset's config (others refused by name) and the best time of each
function when they run in turn, round after round, so a disturbance of the machine falls on all of them."""

from __future__ import annotations

import time
from typing import Callable

from tarflow.presets import get_preset
from tarflow.train.config import RunConfig


def image_preset(name: str, modalities: tuple[str, ...] = ("pixels",)) -> RunConfig:
    """Preset ``name``, which must model images (one of ``modalities``)."""
    preset = get_preset(name)
    if preset.model.modality not in modalities:
        raise SystemExit(f"{name}: only image presets (modality {' or '.join(modalities)}) are timed here, not "
                         f"{preset.model.modality}")
    return preset


def best_times(functions: dict[str, Callable[[int], object]], rounds: int) -> dict[str, float]:
    """{label: fastest seconds of one call} over ``rounds`` timed rounds after one warm-up round; each function gets
    the round's index (a seed)."""
    best = {label: float("inf") for label in functions}
    for round_index in range(rounds + 1):
        for label, function in functions.items():
            started = time.perf_counter()
            function(round_index)
            if round_index:  # the first round warms up
                best[label] = min(best[label], time.perf_counter() - started)
    return best
