"""Training text models (TarFlowLM and its discrete baseline): what they do their own way in the one-process loop
(`loop.train_one_process`).

The same optimisation step as images (`step.train_step`: AdamW, warmup + cosine, clipping, EMA, bad-step
skipping), with a batch of random windows of ``context`` ids and the loss -log p(ids) / context in nats per
character: the negative ELBO for the flow, the exact negative log-likelihood for the baseline. Validation and
test bits/char use every non-overlapping window of their split. A run directory resumes like an image run.

With ``keep_best`` each validation that beats the best so far saves the weights (the EMA copy when kept) to
RUN/best, with its step and figure; at the end those weights are RUN/model and the test figure is theirs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..data.text import TextData, load_text
from ..errors import ConfigError
from ..flows.language import bits_per_char, bound_name, build_language_model, load_language_model, log_likelihood
from ..flows.saving import read_config_json
from ..io import atomic_write_text
from ..sampling.text import generate
from .config import RunConfig
from .device import pick_device
from .loop import OneProcessJob, train_one_process
from .run_dir import check_run_dir

EVAL_BATCH = 64
BEST = "best"  # RUN/best: the weights of the best validation so far, with keep_best


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
    """Train (or resume) a text model in ``run_dir`` with `loop.train_one_process`; return the final test evaluation
    (see the module doc).

    One process, in float32 (the codebook's distances lose too much in bf16); not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("text models train in one process: run `tarflow train` without torchrun")
    config, splits = load_splits(config)
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    device = pick_device(config.train.device)
    return train_one_process(TextJob(config, run_dir, device, progress, amp=None, splits=splits), stop_at)


@dataclasses.dataclass
class TextJob(OneProcessJob):
    """What a text model does its own way in the training loop: random windows of ids, bits/char figures, validation
    bits/char at evaluations, a generated continuation as samples, and test bits/char as the result."""

    splits: dict[str, TextData]

    def build(self):
        return build_language_model(self.config.model).to(self.device)

    def log_prob(self, model, ids, labels):
        return log_likelihood(model, ids)

    def batch(self, model, step):
        """``batch_size`` random windows of ``context`` ids, drawn with a generator seeded by (seed, step)."""
        train_config = self.config.train
        generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + 7_919 * (step + 1))
        ids = self.splits["train"].random_windows(train_config.batch_size, self.config.model.context, generator)
        return ids.to(self.device), None

    def describe(self, model):
        return self.config.model.architecture, f"{len(self.splits['train']):,} training tokens"

    def figure(self, loss):
        """Bits/char: loss / ln 2 (the loss is in nats per character)."""
        return loss / math.log(2)

    def postfix(self, loss, figure):
        return {"bits_per_char": f"{figure:.3f}"}

    def log_record(self, result, figure, lr):
        return {"train_bits_per_char": figure, "lr": lr,
                "grad_norm": None if result.skipped else result.grad_norm.item()}

    def evaluate(self, model, step, say):
        evaluated = evaluate_text(model, self.splits["validation"], self.config.model.context, self.config.train.seed)
        figure = evaluated["bits_per_char"]
        best = self.best()
        kept = self.config.train.keep_best and (best is None or figure < best["validation_bits_per_char"])
        if kept:
            model.save_pretrained(self.run_dir / BEST, {"step": step, "validation_bits_per_char": figure})
        say(f"step {step}: validation bits/char {figure:.4f}" + (" (best so far: kept in best/)" if kept else ""))
        return {"validation_bits_per_char": figure}

    def best(self) -> dict[str, Any] | None:
        """The metadata (step, validation bits/char) of the weights kept in RUN/best, or None."""
        folder = self.run_dir / BEST
        return read_config_json(folder).get("metadata") if (folder / "config.json").is_file() else None

    def sample(self, model, step):
        self.sample_file(model, self.run_dir / "samples" / f"step_{step:06d}.txt")

    def finish(self, model, step, started):
        train_config = self.config.train
        metadata = {"dataset": train_config.dataset, "data_dir": train_config.data_dir, "steps": step}
        best = self.best() if train_config.keep_best else None
        if best is not None:  # the best validation's weights stand for the run
            model = load_language_model(self.run_dir / BEST, self.device)
            metadata.update(best_step=best["step"], best_validation_bits_per_char=best["validation_bits_per_char"])
        model.save_pretrained(self.run_dir / "model", metadata)
        result = evaluate_text(model, self.splits["test"], self.config.model.context, train_config.seed,
                               train_config.eval_draws)
        result.update(dataset=train_config.dataset, split="test", steps=step, device=str(self.device),
                      train_time_s=round(time.perf_counter() - started, 1))
        if best is not None:
            result.update(weights=f"best validation (step {best['step']})", best_step=best["step"],
                          best_validation_bits_per_char=best["validation_bits_per_char"])
        self.sample_file(model, self.run_dir / "samples.txt")
        return result

    def sample_file(self, model, path: Path) -> None:
        write_sample(model, self.splits["test"], path, self.config.train.sample_temperature, self.config.train.seed)


def write_sample(model, data: TextData, path: Path, temperature: float, seed: int, length: int = 200) -> None:
    """``length`` generated characters after the test split's first 32, to ``path`` as "PROMPT|CONTINUATION"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    prompt = data.ids[:min(32, len(data.ids))]
    ids = generate(model, prompt.to(model.device), length, temperature, torch.Generator().manual_seed(seed))
    tokenizer = data.tokenizer
    atomic_write_text(path, tokenizer.decode(ids[:len(prompt)].tolist()) + "|" +
                      tokenizer.decode(ids[len(prompt):].tolist()) + "\n")
