"""Pick the fastest exact-enough sampler for this machine and batch size, and remember it beside the model.

Calibration (`calibrate`) on one seeded batch of the requested size:

1. the sequential sampler runs once (warm-up) and once timed, block by block, keeping every block's
   input and output: the exact reference;
2. for each block and each candidate module count G, GS-Jacobi inverts that block's own reference input
   (so blocks are judged independently) with the tolerance ``tol``; a candidate is dropped as soon as it
   takes longer than the sequential inverse of that block. The fastest surviving candidate whose output
   is within ``max_abs_diff`` / N of the reference (N blocks) wins the block, with an iteration cap of
   twice the iterations it needed plus 2 (a safety valve; the tolerance normally stops it first); a
   block with no winner stays sequential (one token per module);
3. the combined strategy runs end to end; it is chosen if it is faster than the sequential sampler and
   its output is within ``max_abs_diff`` of it, else the sequential sampler is.

The result is stored in ``sampling.json`` beside the model's ``config.json``, keyed by device (type, name,
CPU threads), batch size and whether guidance is on (guidance doubles the rows), written atomically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..flows.conditioning import Condition
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


def candidate_modules(num_tokens: int) -> list[int]:
    """Module counts to try: 1 (Jacobi) and a few GS-Jacobi splits between 2 and (T - 1) / 2."""
    n = num_tokens - 1
    out = sorted({g for g in (1, 2, 3, 4, 6, 8, 12, 16) if g <= max(1, n // 2)})
    return out or [1]


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def calibrate(model, batch: int, guidance: Guidance | None = None, tol: float = DEFAULT_TOL,
              max_abs_diff: float = DEFAULT_MAX_ABS_DIFF, modules: list[int] | None = None, seed: int = 0,
              log=None) -> dict[str, Any]:
    """Measure and choose a sampler for ``batch`` images (see the module docstring). Returns the entry."""
    m = model
    was_training = m.training
    m.eval()
    dev = m.device
    say = log or (lambda msg: None)
    try:
        seq = SequentialSampler(m)
        c = m.config
        z = m.modality.to_tokens(seq.noise(batch, 1.0, torch.Generator().manual_seed(seed)))
        y = (torch.arange(batch) % c.num_classes).to(dev) if c.num_classes else None
        if guidance is None:
            condition = Condition(y)
        else:
            condition = m.conditioning.branches(y, batch, guidance.attn_temp, m.dtype, dev)
        n = len(m.blocks)

        def sequential_pass(timed: bool):
            tokens, ins, outs, secs = z, [None] * n, [None] * n, [0.0] * n
            for i in reversed(range(n)):
                ins[i] = tokens
                _sync(dev)
                t0 = time.perf_counter()
                tokens = m.blocks[i].inverse(tokens, condition, guidance)
                _sync(dev)
                secs[i] = time.perf_counter() - t0
                outs[i] = tokens
            return ins, outs, secs

        sequential_pass(False)  # warm-up
        ins, outs, seq_secs = sequential_pass(True)
        seq_total = sum(seq_secs)
        say(f"sequential: {seq_total:.3f} s for {batch} images")
        per_block_err = max_abs_diff / n
        strategies, block_report = [], []
        for i in reversed(range(n)):
            best = None
            for g in modules or candidate_modules(c.num_tokens):
                strat = BlockStrategy(g)
                _sync(dev)
                t0 = time.perf_counter()
                try:
                    x, iters = solve_block(m.blocks[i], ins[i], condition, guidance, strat, tol,
                                           deadline=t0 + seq_secs[i])
                except TooSlow:
                    say(f"block {i}: {g} module(s): slower than sequential, dropped")
                    continue
                _sync(dev)
                secs = time.perf_counter() - t0
                err = float((x - outs[i]).abs().max())
                say(f"block {i}: {g} module(s): {secs:.3f} s (sequential {seq_secs[i]:.3f} s), "
                    f"iterations {iters}, max abs diff {err:.2e}")
                if err <= per_block_err and secs < seq_secs[i] and (best is None or secs < best[0]):
                    bounds = module_bounds(c.num_tokens, g, m.blocks[i].first)
                    cap = max(min(2 * k + 2, e - s) for k, (s, e) in zip(iters, bounds))
                    best = (secs, BlockStrategy(g, cap), iters, err)
            if best is None:
                strategies.insert(0, BlockStrategy(c.num_tokens - 1, 1))
                block_report.insert(0, {"block": i, "strategy": "sequential", "seconds": seq_secs[i]})
            else:
                strategies.insert(0, best[1])
                block_report.insert(0, {"block": i, "modules": best[1].modules, "max_iters": best[1].max_iters,
                                        "iterations": best[2], "seconds": best[0],
                                        "sequential_seconds": seq_secs[i], "max_abs_diff": best[3]})

        chosen = {"sampler": "sequential", "tol": tol, "blocks": None}
        reason = "no block inverts faster in parallel than token by token"
        if any(s.modules < c.num_tokens - 1 for s in strategies):
            sampler = JacobiSampler(m, strategies, tol)
            par_secs = seq_again = float("inf")
            for _ in range(2):  # interleaved, best of two each: timings on a shared machine are noisy
                _sync(dev)
                t0 = time.perf_counter()
                x = sampler.invert(z, condition, guidance)
                _sync(dev)
                t1 = time.perf_counter()
                seq.invert(z, condition, guidance)
                _sync(dev)
                par_secs, seq_again = min(par_secs, t1 - t0), min(seq_again, time.perf_counter() - t1)
            seq_total = min(seq_total, seq_again)
            err = float((x - outs[0]).abs().max())
            name = "jacobi" if all(s.modules == 1 for s in strategies) else "gs-jacobi"
            say(f"{name} end to end: {par_secs:.3f} s, max abs diff {err:.2e}")
            if err <= max_abs_diff and par_secs < seq_total:
                chosen = {"sampler": name, "tol": tol, "blocks": [s.to_dict() for s in strategies]}
                reason = (f"{seq_total / par_secs:.2f}x faster than sequential in calibration, "
                          f"max abs diff {err:.1e} <= {max_abs_diff:g}")
            else:
                reason = (f"parallel strategy {'too inexact' if err > max_abs_diff else 'not faster'} "
                          f"({par_secs:.3f} s vs {seq_total:.3f} s, max abs diff {err:.1e})")
            chosen.update(parallel_seconds=par_secs, parallel_max_abs_diff=err)
        chosen.update(reason=reason, sequential_seconds=seq_total, batch=batch, guided=guidance is not None,
                      max_abs_diff_allowed=max_abs_diff, device=device_key(dev), per_block=block_report,
                      torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M:%S"))
        return chosen
    finally:
        m.train(was_training)


# ----- storage ------------------------------------------------------------------------------------
def read_calibration(model_dir: str | Path) -> dict[str, Any]:
    """The entries of ``model_dir/sampling.json`` ({} if there is none)."""
    file = Path(model_dir) / SAMPLING_NAME
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


def write_calibration(model_dir: str | Path, key: str, entry: dict[str, Any]) -> Path:
    """Add or replace one entry of ``model_dir/sampling.json`` (atomic write)."""
    entries = read_calibration(model_dir)
    entries[key] = entry
    file = Path(model_dir) / SAMPLING_NAME
    atomic_write_text(file, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "entries": entries},
                                       indent=2) + "\n")
    return file


def sampler_from_entry(model, entry: dict[str, Any]) -> SequentialSampler:
    """The sampler a calibration entry names."""
    if entry.get("sampler", "sequential") == "sequential":
        return SequentialSampler(model)
    strategies = [BlockStrategy.from_dict(d) for d in entry["blocks"]]
    if len(strategies) != len(model.blocks):
        raise CheckpointError(f"the calibration entry has {len(strategies)} block strategies, the model "
                              f"{len(model.blocks)} blocks; recalibrate")
    s = JacobiSampler(model, strategies, float(entry.get("tol", DEFAULT_TOL)))
    s.name = entry["sampler"]
    return s


def auto_sampler(model, model_dir: str | Path | None, batch: int, guidance: Guidance | None = None,
                 recalibrate: bool = False, log=None) -> tuple[SequentialSampler, dict[str, Any], bool]:
    """(sampler, its calibration entry, whether it was calibrated now) for this device and batch size.

    Reads ``model_dir/sampling.json``; calibrates and stores the result when there is no entry for this
    device, batch size and guidance setting (or ``recalibrate``). An unwritable directory only loses the cache.
    """
    key = entry_key(model.device, batch, guidance is not None)
    entries = read_calibration(model_dir) if model_dir is not None and not recalibrate else {}
    fresh = key not in entries
    if fresh:
        entries[key] = calibrate(model, batch, guidance, log=log)
        if model_dir is not None:
            try:
                write_calibration(model_dir, key, entries[key])
            except OSError:
                pass
    return sampler_from_entry(model, entries[key]), entries[key], fresh
