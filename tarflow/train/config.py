"""How to train: data, noise, optimisation, logging. With the model's FlowConfig it makes a RunConfig."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..configs import check_choices, from_dict, option
from ..data.interleaved import SINGLE_MODALITIES
from ..errors import ConfigError
from ..flows import FlowConfig

NOISE_SCHEDULES = ("uniform", "uniform-squared", "log-normal")  # of iTARFlow's noise levels: see noise_levels.py
LOSS_WEIGHTS = ("one", "t", "t-squared", "t-normalised", "t-squared-normalised")


@dataclass
class TrainConfig:
    dataset: str = option("digits", "dataset: digits (built in), mnist, fashion-mnist, cifar10, or folder "
                          "(images in class sub-folders of data_dir); text models: shakespeare (tinyshakespeare) or "
                          "text (data_dir a UTF-8 file); video models: moving-mnist (data_dir the MNIST files) or "
                          "video-folder")
    data_dir: str = option("", "local copy of the dataset's files (no download); empty: the download cache; "
                           "text: the text file")
    clip_count: int = option(0, "video, moving-mnist: clips generated per split (0: the dataset's 10,000)")
    flip: bool = option(False, "random horizontal flips of training images")
    reverse_time: bool = option(False, "video: play each training clip backwards with probability 1/2, for motion "
                                "that looks the same backwards (Moving MNIST's bouncing digits)")
    on_bad_image: str = option("error", "an unreadable image in a folder dataset stops the run (error) or is "
                               "skipped and counted (skip)", choices=("error", "skip"))
    single_modality: str = option("", "pretzel models: train on one modality of each interleaved sequence, the "
                                  "baselines of the joint model: text (the words, <image> words kept as markers) or "
                                  "image (the images: <bos>, <image> and its tokens per image, <eos>); empty: both",
                                  choices=("",) + SINGLE_MODALITIES)
    noise: str = option("uniform", "input noise: uniform dequantization (for bits/dim) or gaussian "
                        "noise augmentation (for sample quality)", choices=("uniform", "gaussian"))
    noise_std: float = option(0.05, "std of the gaussian noise, in [-1, 1] units (noise=gaussian only)")
    noise_schedule: str = option("uniform", "noise-conditioned models (iTARFlow): how each image's noise level t is "
                                 "drawn in [noise_level_min, noise_level_max]: uniform in t, uniform in t^2, or "
                                 "log-normal (ln t ~ N(log_normal_mean, log_normal_std^2), truncated to the range)",
                                 choices=NOISE_SCHEDULES)
    log_normal_mean: float = option(-1.2, "noise_schedule=log-normal: mean of ln t (EDM's P_mean)")
    log_normal_std: float = option(1.0, "noise_schedule=log-normal: std of ln t (EDM's P_std)")
    loss_weight: str = option("t", "noise-conditioned models: weight w(t) of each image's loss: one, t, t-squared, "
                              "t-normalised (t / (t0 + t1)) or t-squared-normalised (t^2 / (t0^2 + t1^2))",
                              choices=LOSS_WEIGHTS)
    label_dropout: float = option(0.1, "probability of replacing a label by the null class (for guidance); caption-"
                                  "conditioned models: caption dropout, the null caption")
    steps: int = option(2000, "optimizer steps")
    batch_size: int = option(128, "images per step")
    lr: float = option(1e-3, "peak learning rate (AdamW, betas 0.9, 0.95)")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    warmup_steps: int = option(100, "linear warmup steps, then cosine decay to zero")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 = off)")
    ema_decay: float = option(0.999, "EMA decay of the weights used for eval and sampling (0 = no EMA)")
    amp: str = option("auto", "mixed precision: auto (bf16 on CUDA if supported, else off), bf16, fp16, off",
                      choices=("auto", "bf16", "fp16", "off"))
    device: str = option("auto", "device: auto (cuda, then mps, then cpu), or a torch device such as cpu, cuda:1")
    parallel: str = option("ddp", "under torchrun: replicate the model (ddp) or shard it across processes "
                           "(fsdp, FSDP2)", choices=("ddp", "fsdp"))
    backend: str = option("auto", "under torchrun: process-group backend (auto: nccl on CUDA, gloo on CPU)",
                          choices=("auto", "gloo", "nccl"))
    dist_timeout_s: float = option(600.0, "under torchrun: seconds a collective may wait for another process "
                                   "before the job stops (a dead rank ends the job, never a hang)")
    seed: int = option(0, "seed of every random choice (data order, noise, init)")
    log_every: int = option(20, "steps between metric log lines")
    eval_every: int = option(500, "steps between test bits/dim evaluations (0 = only at the end)")
    sample_every: int = option(500, "steps between sample grids (0 = only at the end)")
    checkpoint_every: int = option(500, "steps between checkpoints (0 = only at the end)")
    num_samples: int = option(100, "images in each sample grid")
    sample_temperature: float = option(1.0, "prior temperature of the sample grids")
    sample_first_frame_temperature: float = option(0.0, "video models: prior temperature of the sample grids' first "
                                                   "frame (0: sample_temperature); the later frames keep "
                                                   "sample_temperature")
    sample_guidance: float = option(0.0, "classifier-free guidance weight of the sample grids (conditional models)")
    sample_guidance_rule: str = option("auto", "guidance rule of the sample grids: auto (starflow for latent models, "
                                       "tarflow otherwise), tarflow or starflow",
                                       choices=("auto", "tarflow", "starflow"))
    eval_draws: int = option(1, "dequantization draws per test image in the final evaluation")
    keep_best: bool = option(False, "text models: keep the weights of the best validation evaluation (RUN/best) and "
                             "save those as RUN/model, with their test figure (early stopping that keeps training)")
    entropy_every: int = option(100, "steps between attention-entropy measurements per block, layer and head, on a "
                                "fixed batch of 16 training images (0 = off); logged to metrics.jsonl and plotted "
                                "to attention_entropy.png")
    entropy_warn: float = option(0.1, "warn (once per head) when a head's attention entropy falls below this many nats")
    max_bad_steps: int = option(10, "stop (with the last good weights saved) after this many steps in a row with a "
                                "non-finite batch, loss or gradient; such steps are skipped and logged")
    tensorboard: bool = option(False, "also log scalars, sample grids and histograms of each block's log-scales to "
                               "RUN/tb/ for TensorBoard (needs pip install 'tarflow[tensorboard]')")

    def __post_init__(self):
        check_choices(self)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        for name in ("steps", "batch_size", "num_samples", "eval_draws", "log_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("clip_count", "warmup_steps", "eval_every", "sample_every", "checkpoint_every", "grad_clip", "noise_std",
                     "weight_decay", "entropy_every", "entropy_warn"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.sample_temperature <= 0:
            raise ConfigError(f"sample_temperature must be positive, got {self.sample_temperature}")
        if self.sample_first_frame_temperature < 0:
            raise ConfigError(f"sample_first_frame_temperature must not be negative (0: sample_temperature), got "
                              f"{self.sample_first_frame_temperature}")
        if self.sample_guidance < 0:
            raise ConfigError(f"sample_guidance must not be negative (0 = no guidance), got {self.sample_guidance}")
        if self.dist_timeout_s <= 0:
            raise ConfigError(f"dist_timeout_s must be positive, got {self.dist_timeout_s}")
        if self.log_normal_std <= 0:
            raise ConfigError(f"log_normal_std must be positive, got {self.log_normal_std}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


# Where and how a run executes or is logged, not what it computes: they may change when a run is resumed.
RUNTIME_FIELDS = ("data_dir", "device", "backend", "dist_timeout_s", "tensorboard")


@dataclass
class RunConfig:
    """Everything a training run needs: the model's architecture and how to train it."""

    model: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model.noise_conditioning and self.train.noise != "uniform":
            raise ConfigError("a noise-conditioned model (noise_conditioning=true) adds its own gaussian noise t eps "
                              "to uniformly dequantized images: set noise=uniform")
        if self.train.single_modality and self.model.architecture != "pretzel":
            raise ConfigError(f"single_modality={self.train.single_modality!r} makes a baseline of a pretzel model "
                              f"(interleaved words and images): set architecture=pretzel, or leave it empty")
        if self.train.keep_best and self.model.modality != "text":
            raise ConfigError("keep_best chooses weights by their validation figure, which text models have (their "
                              "validation split); image runs evaluate on the test split only: leave it false")
        if self.train.reverse_time and self.model.modality != "video":
            raise ConfigError(f"reverse_time plays training clips backwards: it needs a video model "
                              f"(modality=video), not modality={self.model.modality!r}; leave it false")
        if self.train.sample_first_frame_temperature and self.model.modality != "video":
            raise ConfigError(f"sample_first_frame_temperature sets a clip's first frame apart: it needs a video "
                              f"model (modality=video), not modality={self.model.modality!r}; leave it 0")
        if self.model.architecture == "ntm" and self.train.noise != "uniform":
            raise ConfigError("a Normalizing Trajectory Model (architecture=ntm) noises uniformly dequantized images "
                              "along its own trajectory: set noise=uniform")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        unknown = set(d) - {"model", "train"}
        if unknown:
            raise ConfigError(f"unknown run config sections {sorted(unknown)}; expected 'model' and 'train'")
        return cls(from_dict(FlowConfig, d.get("model", {}), "model config"),
                   from_dict(TrainConfig, d.get("train", {}), "train config"))
