"""Training the Pretzel model (architecture=pretzel, STARFlow2) on interleaved MNIST sequences: what it does its own
way in the one-process loop (`loop.train_one_process`).

The same optimisation step as every model (`step.train_step`) on batches of sequences drawn from (seed, step)
alone (`tarflow.data.interleaved`); each batch's images are uniformly dequantized (noise=uniform) or placed at their
bin centres with gaussian noise of noise_std added (noise=gaussian). The loss is the joint one,

    loss = -(text nats / text targets + image nats / image dimensions)     (`JointLikelihood.loss`)

each a mean over the batch's units. Evaluations and the result give test bits per word of the text and bits/dim of
the images (bin width 2/256; with gaussian noise the density is of the noisy images, so the image figure is not a
bits/dim of the data). Samples: generated sequences for a text-to-image prompt and a captioning prompt, as a PNG
strip of their images (one row per sequence) and a text file of their words.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..data.interleaved import WORDS, InterleavedData, load_interleaved, parse_prompt
from ..errors import ConfigError
from ..flows.pretzel import JointLikelihood, Pretzel
from ..interleaved_io import row_words, sequence_strip
from ..io import atomic_write_text
from ..sampling.interleaved import generate
from ..viz import save_grid
from .config import RunConfig
from .device import pick_device
from .loop import OneProcessJob, train_one_process
from .run_dir import check_run_dir

EVAL_BATCH = 64
EVAL_SEQUENCES = 512  # test sequences of each evaluation during training (the result uses the whole split)
LEVELS = 256
# text-to-image; captioning of the first test image. A text baseline draws no samples (its <image> has no tokens).
SAMPLE_PROMPTS = {"": ("a seven : <image>", "<image> shows"), "image": ("<image>",), "text": ()}
SAMPLE_ROWS = 4


def train_interleaved(config: RunConfig, run_dir: str | Path, progress: bool = True, stop_at: int | None = None
                      ) -> dict[str, Any]:
    """Train (or resume) a pretzel model in ``run_dir`` with `loop.train_one_process`; return the final test
    evaluation. One process, float32."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("pretzel models train in one process: run `tarflow train` without torchrun")
    model_config, train_config = config.model, config.train
    if train_config.dataset != "mnist" or (model_config.image_size, model_config.channels) != (28, 1):
        raise ConfigError(f"pretzel models train on interleaved MNIST sequences: set dataset=mnist, image_size=28 and "
                          f"channels=1, not {train_config.dataset!r}, {model_config.image_size}, "
                          f"{model_config.channels}")
    config = RunConfig(dataclasses.replace(model_config, words=model_config.words or " ".join(WORDS)), train_config)
    splits = {split: load_interleaved(split, seed=train_config.seed, patch_size=model_config.patch_size,
                                      data_dir=train_config.data_dir or None, progress=progress)
              for split in ("train", "test")}
    if train_config.single_modality:
        splits = {split: data.one_modality(train_config.single_modality) for split, data in splits.items()}
    longest = max(int(data.lengths.max()) for data in splits.values())
    if longest > model_config.context:
        raise ConfigError(f"the longest interleaved sequence takes {longest} positions: set context to at least "
                          f"{longest}, not {model_config.context}")
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    device = pick_device(train_config.device)
    return train_one_process(InterleavedJob(config, run_dir, device, progress, amp=None, splits=splits), stop_at)


def noisy_batch(data: InterleavedData, indices: torch.Tensor, noise: str, noise_std: float,
                generator: torch.Generator):
    """The sequences ``indices`` with uniformly dequantized images, or bin centres plus gaussian noise."""
    if noise == "uniform":
        return data.batch(indices, generator)
    batch = data.batch(indices)
    eps = torch.randn(batch.images.shape, generator=generator)
    present = torch.arange(batch.images.shape[1]) < batch.image_count[:, None]
    return dataclasses.replace(batch, images=batch.images + noise_std * eps * present[..., None, None, None])


def figures(likelihood: JointLikelihood) -> dict[str, float | None]:
    """Bits per word of the text and bits/dim of the images (bin width 2/256) of a batch's sums; None for a
    modality the batch does not hold (a single-modality baseline's)."""
    targets, dims = likelihood.text_targets.sum().item(), likelihood.image_dims.sum().item()
    text_nats = -likelihood.text.sum().item() / targets if targets else None
    image_nats = -likelihood.image.sum().item() / dims if dims else None
    return {"text_bits_per_word": None if text_nats is None else text_nats / math.log(2),
            "image_bits_per_dim": None if image_nats is None else (image_nats - math.log(2 / LEVELS)) / math.log(2)}


def say_figures(figures_: dict[str, float | None]) -> str:
    """"text bits/word 1.2345, image bits/dim 0.9876", leaving out a modality the figures lack."""
    names = {"text_bits_per_word": "text bits/word", "image_bits_per_dim": "image bits/dim"}
    return ", ".join(f"{names[key]} {figures_[key]:.4f}" for key in names if figures_.get(key) is not None)


@torch.no_grad()
def evaluate_interleaved(model: Pretzel, data: InterleavedData, noise: str, noise_std: float, seed: int,
                         count: int | None = None) -> dict[str, Any]:
    """`figures` over the first ``count`` sequences of ``data`` (all by default), noised as in training."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    count = len(data) if count is None else min(count, len(data))
    sums = None
    for start in range(0, count, EVAL_BATCH):
        batch = noisy_batch(data, torch.arange(start, min(start + EVAL_BATCH, count)), noise, noise_std, generator)
        likelihood = model.log_likelihood(batch)
        parts = [likelihood.text.sum(), likelihood.image.sum(), likelihood.text_targets.sum(),
                 likelihood.image_dims.sum()]
        sums = parts if sums is None else [total + part for total, part in zip(sums, parts)]
    return {**figures(JointLikelihood(*(total.double().cpu() for total in sums))), "sequences": count}


@dataclasses.dataclass
class InterleavedJob(OneProcessJob):
    """What a pretzel model does its own way in the training loop (see the module doc)."""

    splits: dict[str, InterleavedData]
    last: dict[str, float] = dataclasses.field(default_factory=dict)  # the last step's figures

    def build(self):
        return Pretzel(self.config.model).to(self.device)

    def log_prob(self, model, images, batch):
        """The joint loss as the loop's -mean(log p) / D: -loss D, one value (D = the model's image dimensions)."""
        likelihood = model.log_likelihood(dataclasses.replace(batch, images=images))
        self.last = figures(JointLikelihood(likelihood.text.detach(), likelihood.image.detach(),
                                            likelihood.text_targets, likelihood.image_dims))
        return (-likelihood.loss() * self.config.model.num_dims).reshape(1)

    def batch(self, model, step):
        """``batch_size`` sequences drawn with a generator seeded by (seed, step); (images, the batch)."""
        train_config = self.config.train
        generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + 7_919 * (step + 1))
        data = self.splits["train"]
        indices = torch.randint(len(data), (train_config.batch_size,), generator=generator)
        batch = noisy_batch(data, indices, train_config.noise, train_config.noise_std, generator).to(self.device)
        return batch.images, batch

    def describe(self, model):
        modality = self.config.train.single_modality
        kind = (f"a pretzel model on the {modality} of each sequence alone (a single-modality baseline)" if modality
                else "a pretzel model (words and images)")
        if model.config.language_model:
            kind += (f", its language-model stream the layers of {model.config.language_model} "
                     f"({model.language_model_words} of {len(model.words)} words started from its embedding)")
        return kind, f"{len(self.splits['train']):,} training sequences"

    def figure(self, loss):
        """The joint loss in nats (text per word + images per dimension)."""
        return loss

    def postfix(self, loss, figure):
        return {"loss": f"{loss:.4f}", **{name: f"{value:.3f}" for name, value in self.last.items()
                                          if value is not None}}

    def log_record(self, result, figure, lr):
        return {"train_loss": figure, **{f"train_{name}": value for name, value in self.last.items()}, "lr": lr,
                "grad_norm": None if result.skipped else result.grad_norm.item()}

    def evaluate(self, model, step, say):
        train_config = self.config.train
        evaluated = evaluate_interleaved(model, self.splits["test"], train_config.noise, train_config.noise_std,
                                         train_config.seed, EVAL_SEQUENCES)
        say(f"step {step}: test {say_figures(evaluated)} ({evaluated['sequences']} sequences)")
        return {f"test_{name}": value for name, value in evaluated.items() if name != "sequences"}

    def sample(self, model, step):
        self.write_samples(model, self.run_dir / "samples" / f"step_{step:06d}")

    def finish(self, model, step, started):
        train_config = self.config.train
        noise_std = train_config.noise_std if train_config.noise == "gaussian" else 0.0
        metadata = {"dataset": "interleaved-mnist", "data_dir": train_config.data_dir, "steps": step,
                    "noise": train_config.noise, "noise_std": noise_std,
                    "single_modality": train_config.single_modality,
                    "sampling": {"temperature": train_config.sample_temperature}}
        model.save_pretrained(self.run_dir / "model", metadata)
        result = evaluate_interleaved(model, self.splits["test"], train_config.noise, train_config.noise_std,
                                      train_config.seed)
        result.update(dataset="interleaved-mnist", split="test", steps=step, device=str(self.device),
                      train_time_s=round(time.perf_counter() - started, 1))
        self.write_samples(model, self.run_dir / "samples" / "final")
        return result

    def write_samples(self, model: Pretzel, stem: Path) -> None:
        """STEM.png (each generated sequence's images in a row, white after its last one: text-to-image rows, then
        captioning) and STEM.txt (their words, "[image]" for each image)."""
        train_config = self.config.train
        prompts = SAMPLE_PROMPTS[train_config.single_modality]
        if not prompts:
            return
        noise_std = train_config.noise_std if train_config.noise == "gaussian" else 0.0
        test_image = self.splits["test"].batch([first_captioning(self.splits["test"])]).images[0, 0]
        generator = torch.Generator().manual_seed(train_config.seed)
        model.eval()
        lines, strips = [], []
        for prompt, images in zip(prompts, ([None], [test_image])):
            ids, slots = parse_prompt(prompt, [image for image in images if image is not None])
            batch = generate(model, ids, slots, temperature=train_config.sample_temperature, generator=generator,
                             noise_std=noise_std, batch=SAMPLE_ROWS).batch.to("cpu")
            lines += [" ".join(row_words(batch, row)).replace("<image>", "[image]") for row in range(len(batch.ids))]
            strips.append(sequence_strip(batch).unflatten(0, (len(batch.ids), -1)))
        columns = max(strip.shape[1] for strip in strips)
        white = [strip.new_full((len(strip), columns - strip.shape[1], *strip.shape[2:]), 255) for strip in strips]
        strip = torch.cat([torch.cat(parts, 1) for parts in zip(strips, white)]).flatten(0, 1)
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_grid(strip, stem.with_suffix(".png"), nrow=columns)
        atomic_write_text(stem.with_suffix(".txt"), "\n".join(lines) + "\n")


def first_captioning(data: InterleavedData) -> int:
    """The index of the split's first image-to-text sequence (its image is the captioning sample's)."""
    kinds = data.batch(torch.arange(min(len(data), 100))).kinds
    return kinds.index("image-to-text") if "image-to-text" in kinds else 0
