"""The training loop of text models (TarFlowLM and its discrete baseline), read top to bottom.

The same optimisation step as images (`step.train_step`: AdamW, warmup + cosine, clipping, EMA, bad-step
skipping), with a batch of random windows of ``context`` ids and the loss -log p(ids) / context in nats per
character: the negative ELBO for the flow, the exact negative log-likelihood for the baseline. Validation and
test bits/char use every non-overlapping window of their split. A run directory resumes like an image run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..data.text import TextData, load_text
from ..errors import ConfigError
from ..flows.language import bits_per_char, bound_name, build_language_model, log_likelihood
from ..io import atomic_write_text
from ..progress import progress_bar
from ..report import write_report
from ..sampling.text import generate
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig
from .device import pick_device
from .faults import run_guards
from .step import ema_copy, start_optimisation, train_step
from .run_dir import check_run_dir, start_run, trim_metrics
from .trainer import every

EVAL_BATCH = 64


def load_splits(config: RunConfig) -> tuple[RunConfig, dict[str, TextData]]:
    """The train, validation and test splits, and the config with the character vocabulary of the text filled in."""
    model, train = config.model, config.train

    def load(split: str, vocabulary: str) -> TextData:
        return load_text(train.dataset, split, model.context, model.tokenizer, train.data_dir or None, vocabulary)

    splits = {"train": load("train", model.vocabulary)}
    vocabulary = splits["train"].tokenizer.vocabulary
    splits.update({split: load(split, vocabulary) for split in ("validation", "test")})
    return RunConfig(dataclasses.replace(model, vocabulary=vocabulary), train), splits


@torch.no_grad()
def evaluate_text(model, data: TextData, context: int, seed: int = 0, draws: int = 1,
                  batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Bits/char of every non-overlapping window of ``data`` (mean and its standard error over windows), with
    ``draws`` samples v ~ q per window for the flow (each one-sample ELBO a bound; their mean is reported)."""
    model.eval()
    windows = data.windows(context)
    generator = torch.Generator().manual_seed(seed)
    per_window = []
    for start in range(0, len(windows), batch_size):
        ids = windows[start:start + batch_size].to(model.device)
        total = sum(log_likelihood(model, ids, generator) for _ in range(draws)) / draws
        per_window.append(bits_per_char(total.double().cpu(), context))
    values = torch.cat(per_window)
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"bits_per_char": values.mean().item(), "stderr": stderr, "bound": bound_name(model),
            "windows": len(values), "chars": len(values) * context, "draws": draws}


def train_text(config: RunConfig, run_dir: str | Path, progress: bool = True, stop_at: int | None = None
               ) -> dict[str, Any]:
    """Train (or resume) a text model in ``run_dir``; return the final test evaluation (see the module doc).

    One process, in float32 (the codebook's distances lose too much in bf16); not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("text models train in one process: run `tarflow train` without torchrun")
    config, splits = load_splits(config)
    train_config, model_config, run_dir = config.train, config.model, Path(run_dir)
    check_run_dir(run_dir)
    device = pick_device(train_config.device)
    with run_guards(run_dir) as stop:
        torch.manual_seed(train_config.seed)
        model = build_language_model(model_config).to(device)
        ema = ema_copy(model, train_config)
        step, elapsed = 0, 0.0
        checkpoint = start_run(run_dir, config)
        run = start_optimisation(model, train_config, device, None, ema, lambda ids, _: log_likelihood(model, ids))
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, model, ema)
            step, elapsed = state["step"], state["elapsed_s"]
            torch.set_rng_state(state["rng"]["torch"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.restore(state)
            print(f"resuming {run_dir} from step {step}")
        trim_metrics(run_dir, step)
        print(f"training {model_config.architecture} on {device}: {sum(p.numel() for p in model.parameters()):,} "
              f"parameters, {len(splits['train']):,} training tokens")
        log = open(run_dir / "metrics.jsonl", "a")
        bar = progress_bar(total=train_config.steps, initial=step, desc="train", enabled=progress,
                           every_steps=train_config.log_every, unit="step")  # a log file: a line every log_every steps
        t0, window = time.perf_counter() - elapsed, []
        model.train()
        while step < train_config.steps:
            generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + 7_919 * (step + 1))
            ids = splits["train"].random_windows(train_config.batch_size, model_config.context, generator)
            result = train_step(run, ids.to(device), None, step)
            step += 1
            record = {}
            if not result.skipped:
                window.append(result.loss.item() / math.log(2))
                bar.set_postfix(bits_per_char=f"{window[-1]:.3f}", refresh=False)
            bar.update(1)  # after the postfix, so a log line shows this step's figure
            if (step % train_config.log_every == 0 or step == train_config.steps) and window:
                record.update(train_bits_per_char=sum(window) / len(window), lr=run.scheduler.get_last_lr()[0],
                              grad_norm=result.grad_norm.item())
                window = []
            if every(step, train_config.eval_every, train_config.steps):
                evaluated = evaluate_text(ema if ema is not None else model, splits["validation"],
                                          model_config.context, train_config.seed)
                record["validation_bits_per_char"] = evaluated["bits_per_char"]
                bar.write(f"step {step}: validation bits/char {evaluated['bits_per_char']:.4f}")
                model.train()
            if every(step, train_config.sample_every, train_config.steps):
                write_sample(ema if ema is not None else model, splits["test"],
                             run_dir / "samples" / f"step_{step:06d}.txt", train_config.sample_temperature,
                             train_config.seed)
                model.train()
            if record:
                record.update(step=step, elapsed_s=round(time.perf_counter() - t0, 3))
                log.write(json.dumps(record) + "\n")
                log.flush()
            if "validation_bits_per_char" in record:
                write_report(run_dir)  # RUN/report.html, refreshed at every evaluation
            halt = step == stop_at or stop.requested or run.bad_steps.exhausted
            if every(step, train_config.checkpoint_every, train_config.steps) or halt:
                state = run.state(step, time.perf_counter() - t0, run.optimizer.state_dict())
                save_checkpoint(run_dir, model.state_dict(), None if ema is None else ema.state_dict(), state)
            if halt:
                break
        bar.close()
        log.close()
        if stop.requested:
            raise stop.error(run_dir, step)
        if run.bad_steps.exhausted:
            raise run.bad_steps.error(run_dir, step, train_config)
        if step < train_config.steps:
            return {"step": step}
        final = ema if ema is not None else model
        metadata = {"dataset": train_config.dataset, "data_dir": train_config.data_dir, "steps": step}
        final.save_pretrained(run_dir / "model", metadata)
        result = evaluate_text(final, splits["test"], model_config.context, train_config.seed, train_config.eval_draws)
        result.update(dataset=train_config.dataset, split="test", steps=step, device=str(device),
                      train_time_s=round(time.perf_counter() - t0, 1))
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        write_sample(final, splits["test"], run_dir / "samples.txt", train_config.sample_temperature,
                     train_config.seed)
        write_report(run_dir)
        return result


def write_sample(model, data: TextData, path: Path, temperature: float, seed: int, length: int = 200) -> None:
    """``length`` generated characters after the test split's first 32, to ``path`` as "PROMPT|CONTINUATION"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    prompt = data.ids[:min(32, len(data.ids))]
    ids = generate(model, prompt.to(model.device), length, temperature, torch.Generator().manual_seed(seed))
    tokenizer = data.tokenizer
    atomic_write_text(path, tokenizer.decode(ids[:len(prompt)].tolist()) + "|" +
                      tokenizer.decode(ids[len(prompt):].tolist()) + "\n")
