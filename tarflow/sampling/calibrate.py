"""Pick the fastest exact-enough sampler for this machine and batch size, measured once and stored.

Calibration (`calibrate`) on one seeded batch of the requested size:

1. the sequential sampler runs once (warm-up) and once timed, block by block, keeping every block's
   input and output: the exact reference;
2. for each block and each candidate module count G (a video block within frames counts the tokens of one frame;
   a video block over the clip also tries one module per frame), GS-Jacobi inverts that block's own reference input
   (so blocks are judged independently) with the tolerance ``tol``; a candidate is dropped as soon as it
   takes longer than the sequential inverse of that block. The fastest surviving candidate whose output
   is within ``max_abs_diff`` / N of the reference (N blocks) wins the block, with an iteration cap of
   twice the iterations it needed plus 2 (a safety valve; the tolerance normally stops it first); a
   block with no winner stays sequential (one token per module);
3. the combined strategy runs end to end; it is chosen if it is faster than the sequential sampler and
   its output is within ``max_abs_diff`` of it, else the sequential sampler is.

`calibrate_and_save` (the command `tarflow calibrate`) stores the result in a calibration file, by default
``sampling.json`` beside the model's ``config.json`` (a file the library owns, kept by `save_pretrained`),
keyed by device (type, name, CPU threads), batch size and whether guidance is on (guidance doubles the rows),
written atomically. Sampling only reads it (`auto_sampler`): without an entry it uses the exact sequential
sampler, so sampling never writes into a model directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..flows.video import FrameLocalBlock
from ..io import atomic_write_text
from .guidance import Guidance
from .jacobi import BlockStrategy, JacobiSampler, TooSlow, module_bounds, solve_block
from .sequential import SequentialSampler

SAMPLING_NAME = "sampling.json"
FORMAT = "tarflow-sampling"
FORMAT_VERSION = 1
DEFAULT_TOL = 1e-5
DEFAULT_MAX_ABS_DIFF = 1e-3


def device_key(device: torch.device) -> str:
    """What the timings depend on: device type and name, and for CPUs the intra-op thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{torch.get_num_threads()}threads"
    return device.type


def entry_key(device: torch.device, batch: int, guided: bool) -> str:
    return f"{device_key(device)}|batch={batch}|guided={int(guided)}"


def candidate_modules(num_tokens: int, frames: int | None = None) -> list[int]:
    """Module counts to try: 1 (Jacobi) and a few GS-Jacobi splits between 2 and (T - 1) / 2, and ``frames`` (one
    module per frame of a video block over the whole clip: video-aware Jacobi's split) when given."""
    n = num_tokens - 1
    out = sorted({g for g in (1, 2, 3, 4, 6, 8, 12, 16, frames or 1) if g <= max(1, n // 2)})
    return out or [1]


def block_tokens(model, block) -> tuple[int, int | None]:
    """(tokens of each sequence the block inverts, its frame count): a video block within frames
    (`FrameLocalBlock`) inverts every frame as a sequence of its own; a video block over the clip has frames."""
    modality = model.modality
    if isinstance(block, FrameLocalBlock):
        return modality.tokens_per_frame, None
    return modality.num_tokens, getattr(modality, "frame_count", None)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def calibrate(model, batch: int, guidance: Guidance | None = None, tol: float = DEFAULT_TOL,
              max_abs_diff: float = DEFAULT_MAX_ABS_DIFF, modules: list[int] | None = None, seed: int = 0,
              log=None) -> dict[str, Any]:
    """Measure and choose a sampler for ``batch`` images (see the module docstring). Returns the entry."""
    was_training = model.training
    model.eval()
    device = model.device
    say = log or (lambda message: None)
    try:
        sequential = SequentialSampler(model)
        config = model.config
        z = model.modality.to_tokens(sequential.noise(batch, 1.0, torch.Generator().manual_seed(seed)))
        labels = torch.arange(batch) % config.num_classes if config.num_classes else None
        y = model.conditioning.check(labels, batch, device)  # a caption-conditioned model: the labels' captions
        condition = sequential.condition(y, batch, guidance)
        num_blocks = len(model.blocks)

        def sequential_pass():
            """Every block's input, output and seconds, inverted token by token (last block first)."""
            tokens = z
            inputs, outputs, seconds = [None] * num_blocks, [None] * num_blocks, [0.0] * num_blocks
            for i in reversed(range(num_blocks)):
                inputs[i] = tokens
                synchronize(device)
                started = time.perf_counter()
                tokens = model.blocks[i].inverse(tokens, condition, guidance)
                synchronize(device)
                seconds[i] = time.perf_counter() - started
                outputs[i] = tokens
            return inputs, outputs, seconds

        sequential_pass()  # warm-up
        inputs, outputs, sequential_seconds = sequential_pass()
        sequential_total = sum(sequential_seconds)
        say(f"sequential: {sequential_total:.3f} s for {batch} images")
        per_block_limit = max_abs_diff / num_blocks
        strategies, block_report = [], []
        for i in reversed(range(num_blocks)):
            best = None  # (seconds, strategy, iterations, max abs diff)
            tokens, frames = block_tokens(model, model.blocks[i])
            for module_count in modules or candidate_modules(tokens, frames):
                synchronize(device)
                started = time.perf_counter()
                try:
                    x, iterations = solve_block(model.blocks[i], inputs[i], condition, guidance,
                                                BlockStrategy(module_count), tol,
                                                deadline=started + sequential_seconds[i])
                except TooSlow:
                    say(f"block {i}: {module_count} module(s): slower than sequential, dropped")
                    continue
                synchronize(device)
                seconds = time.perf_counter() - started
                error = float((x - outputs[i]).abs().max())
                say(f"block {i}: {module_count} module(s): {seconds:.3f} s (sequential {sequential_seconds[i]:.3f} s), "
                    f"iterations {iterations}, max abs diff {error:.2e}")
                faster = seconds < sequential_seconds[i] and (best is None or seconds < best[0])
                if error <= per_block_limit and faster:
                    bounds = module_bounds(tokens, module_count, model.blocks[i].first)
                    cap = max(min(2 * k + 2, end - start) for k, (start, end) in zip(iterations, bounds))
                    best = (seconds, BlockStrategy(module_count, cap), iterations, error)
            if best is None:
                strategies.insert(0, BlockStrategy(config.num_tokens - 1, 1))
                block_report.insert(0, {"block": i, "strategy": "sequential", "seconds": sequential_seconds[i]})
            else:
                strategies.insert(0, best[1])
                block_report.insert(0, {"block": i, "modules": best[1].modules, "max_iters": best[1].max_iters,
                                        "iterations": best[2], "seconds": best[0],
                                        "sequential_seconds": sequential_seconds[i], "max_abs_diff": best[3]})

        chosen = {"sampler": "sequential", "tol": tol, "blocks": None}
        reason = "no block inverts faster in parallel than token by token"
        if any(strategy.modules < config.num_tokens - 1 for strategy in strategies):
            sampler = JacobiSampler(model, strategies, tol)
            parallel_seconds = sequential_again = float("inf")
            for _ in range(2):  # interleaved, best of two each: timings on a shared machine are noisy
                synchronize(device)
                started = time.perf_counter()
                x = sampler.invert(z, condition, guidance)
                synchronize(device)
                middle = time.perf_counter()
                sequential.invert(z, condition, guidance)
                synchronize(device)
                parallel_seconds = min(parallel_seconds, middle - started)
                sequential_again = min(sequential_again, time.perf_counter() - middle)
            sequential_total = min(sequential_total, sequential_again)
            error = float((x - outputs[0]).abs().max())
            name = "jacobi" if all(strategy.modules == 1 for strategy in strategies) else "gs-jacobi"
            say(f"{name} end to end: {parallel_seconds:.3f} s, max abs diff {error:.2e}")
            if error <= max_abs_diff and parallel_seconds < sequential_total:
                chosen = {"sampler": name, "tol": tol, "blocks": [strategy.to_dict() for strategy in strategies]}
                reason = (f"{sequential_total / parallel_seconds:.2f}x faster than sequential in calibration, "
                          f"max abs diff {error:.1e} <= {max_abs_diff:g}")
            else:
                reason = (f"parallel strategy {'too inexact' if error > max_abs_diff else 'not faster'} "
                          f"({parallel_seconds:.3f} s vs {sequential_total:.3f} s, max abs diff {error:.1e})")
            chosen.update(parallel_seconds=parallel_seconds, parallel_max_abs_diff=error)
        chosen.update(reason=reason, sequential_seconds=sequential_total, batch=batch, guided=guidance is not None,
                      max_abs_diff_allowed=max_abs_diff, device=device_key(device), per_block=block_report,
                      torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M:%S"))
        return chosen
    finally:
        model.train(was_training)


# ----- storage ------------------------------------------------------------------------------------
def calibration_file(location: str | Path) -> Path:
    """The calibration file of ``location``: a model directory's ``sampling.json``, or ``location`` itself."""
    location = Path(location)
    return location / SAMPLING_NAME if location.is_dir() else location


def read_calibration(location: str | Path) -> dict[str, Any]:
    """The entries of a calibration file (or of a model directory's sampling.json); {} if there is none."""
    file = calibration_file(location)
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); delete it to recalibrate") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{file} is not a tarflow sampling calibration (format {FORMAT} "
                              f"v{FORMAT_VERSION}); delete it to recalibrate")
    return data.get("entries", {})


def write_calibration(location: str | Path, key: str, entry: dict[str, Any]) -> Path:
    """Add or replace one entry of a calibration file, keeping the others (atomic write)."""
    entries = read_calibration(location)
    entries[key] = entry
    file = calibration_file(location)
    atomic_write_text(file, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "entries": entries},
                                       indent=2) + "\n")
    return file


def calibrate_and_save(model, location: str | Path, batch: int, guidance: Guidance | None = None, log=None,
                       **options) -> tuple[dict[str, Any], Path]:
    """Calibrate (see `calibrate`, ``options`` are its own) and store the entry under this device, batch size
    and guidance setting in ``location`` (a model directory: its sampling.json). Returns (entry, file)."""
    read_calibration(location)  # a damaged or foreign file is refused before the measurement
    entry = calibrate(model, batch, guidance, log=log, **options)
    return entry, write_calibration(location, entry_key(model.device, batch, guidance is not None), entry)


def sampler_from_entry(model, entry: dict[str, Any]) -> SequentialSampler:
    """The sampler a calibration entry names."""
    if entry.get("sampler", "sequential") == "sequential":
        return SequentialSampler(model)
    strategies = [BlockStrategy.from_dict(d) for d in entry["blocks"]]
    if len(strategies) != len(model.blocks):
        raise CheckpointError(f"the calibration entry has {len(strategies)} block strategies, the model "
                              f"{len(model.blocks)} blocks; recalibrate")
    sampler = JacobiSampler(model, strategies, float(entry.get("tol", DEFAULT_TOL)))
    sampler.name = entry["sampler"]
    return sampler


def auto_sampler(model, location: str | Path | None, batch: int, guidance: Guidance | None = None
                 ) -> tuple[SequentialSampler, dict[str, Any] | None]:
    """(sampler, its calibration entry) for this device, batch size and guidance setting, read from
    ``location`` (a calibration file or a model directory); (the exact sequential sampler, None) when there is
    no such entry. Never calibrates and never writes: `calibrate_and_save` (`tarflow calibrate`) does."""
    entries = read_calibration(location) if location is not None else {}
    entry = entries.get(entry_key(model.device, batch, guidance is not None))
    if entry is None:
        return SequentialSampler(model), None
    return sampler_from_entry(model, entry), entry
