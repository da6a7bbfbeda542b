"""The training loop: one function, read top to bottom."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..data import bin_width, dequantize, flip_batch, load_dataset, reverse_time_batch
from ..data.datasets import ImageData
from ..errors import ConfigError, TarflowError
from ..flows import FlowConfig, TarFlow
from ..io import atomic_write_text
from ..metrics import evaluate_bpd
from ..metrics.entropy import attention_entropy, collapsed_heads
from ..metrics.video import frame_bpd_figures, frame_latent_figures
from ..progress import progress_bar
from ..report import write_report
from ..sampling import Guidance, IterativeDenoiser, SequentialSampler, frame_temperatures
from ..sampling.guidance import default_rule
from ..viz import plot_curves, plot_entropy, save_grid, to_uint8
from .captions import training_condition
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from . import distributed as dist
from .device import amp_dtype
from .faults import StopSignals, raise_if_stopped, run_guards
from .latents import LatentData, evaluate_latent_nll, image_geometry, prepare_latents
from .noise_levels import add_noise_levels
from .run_dir import check_run_dir, start_run, trim_metrics
from .step import ema_copy, start_optimisation, train_step
from .tensorboard import TensorBoardLog
from .video import dataset_options, load_clips, save_clips

def train(config: RunConfig, run_dir: str | Path, progress: bool = True, stop_at: int | None = None
          ) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; return the final test evaluation.

    A run directory that already holds a checkpoint of the same config is resumed from it, and the result
    is exactly that of an uninterrupted run (on CPU). ``stop_at`` ends the process-local loop after that
    step (checkpointing first), as an interruption would. Faults (see `faults`): a second trainer on the
    same directory is refused; SIGINT/SIGTERM save a checkpoint at the end of the step and raise
    `TrainingStopped`; a step with a non-finite batch, loss or gradient is skipped and logged, and
    ``max_bad_steps`` in a row stop the run with the last good weights saved; a full or read-only disk
    raises `OutputError` with the previous checkpoint intact.
    """
    if config.model.modality == "text":  # language models: their own loop over windows of ids (train/text.py)
        from .text import train_text
        return train_text(config, run_dir, progress, stop_at)
    if config.model.architecture == "ntm":  # Normalizing Trajectory Models: their own loop (train/trajectory.py)
        from .trajectory import train_trajectory
        return train_trajectory(config, run_dir, progress, stop_at)
    if config.model.architecture == "pretzel":  # interleaved words and images: their own loop (train/interleaved.py)
        from .interleaved import train_interleaved
        return train_interleaved(config, run_dir, progress, stop_at)
    train_config, model_config, run_dir = config.train, config.model, Path(run_dir)
    cluster, device = dist.setup(train_config.device, train_config.parallel, train_config.backend,
                                 train_config.dist_timeout_s)
    try:
        dist.check_batch(train_config.batch_size, cluster)
        data, test = load_data(train_config, model_config, cluster, progress)
        if model_config.latent:  # encoded once by the frozen autoencoder (video: frame by frame); scale measured
            model_config, data, test = prepare_latents(model_config, train_config, data, test, device,
                                                       progress and cluster.is_main)
            config = dataclasses.replace(config, model=model_config)
        check_fits(model_config, data)
        check_run_dir(run_dir)
        with run_guards(run_dir) as stop:
            return train_loop(config, run_dir, cluster, device, data, test, progress, stop_at, stop)
    except RuntimeError as e:
        if not dist.lost_peer(e):
            raise
        raise TarflowError(f"process {cluster.rank} of {cluster.world_size} lost contact with the others "
                           f"({str(e).splitlines()[0][:200]}): another process has probably died, see its output. "
                           f"The last checkpoint in {run_dir} is intact; launch the same command again to resume "
                           f"from it") from None
    finally:
        dist.teardown()


def train_loop(config: RunConfig, run_dir: Path, cluster: dist.Cluster, device: torch.device, data: ImageData,
               test: ImageData, progress: bool, stop_at: int | None, stop: StopSignals) -> dict[str, Any]:
    train_config, model_config, main = config.train, config.model, cluster.is_main
    torch.manual_seed(train_config.seed)
    model = TarFlow(model_config).to(device)
    ema = ema_copy(model, train_config)
    step, elapsed, state = 0, 0.0, None
    checkpoint = start_run(run_dir, config) if main else None
    dist.barrier()
    checkpoint = checkpoint if main else find_checkpoint(run_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, ema)  # into the plain modules, before they are wrapped
        step, elapsed = state["step"], state["elapsed_s"]
        torch.set_rng_state(state["rng"]["torch"])
        if main:
            print(f"resuming {run_dir} from step {step}")
    net = dist.wrap(model, cluster, device)  # net(x, y) = log p(x | y), through DDP or over FSDP shards
    if ema is not None and cluster.sharded:
        dist.shard(ema)  # sharded like the model, so the EMA update stays local
    run = start_optimisation(model, train_config, device, amp_dtype(device, train_config.amp), ema, log_prob=net)
    if state is not None:
        dist.load_optimizer_state(model, run.optimizer, state["optimizer"])
        run.restore(state)
    if main:
        trim_metrics(run_dir, step)
        processes = f", {cluster.world_size} processes ({train_config.parallel})" if cluster.distributed else ""
        precision = "amp " + str(run.amp).removeprefix("torch.") if run.amp else "float32"
        examples = "clips" if model_config.modality == "video" else "images"
        print(f"training on {device}{processes} ({precision}): "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(data):,} training {examples}")

    latent = isinstance(data, LatentData)  # figures in latent nats/dim, not bits/dim
    log_bin = 0.0 if latent else math.log(bin_width(data.levels))
    board = TensorBoardLog(run_dir, step) if train_config.tensorboard and main else None
    log = open(run_dir / "metrics.jsonl", "a") if main else None
    bar = progress_bar(total=train_config.steps, initial=step, desc="train", enabled=progress and main,
                       every_steps=train_config.log_every, unit="step")  # a log file: a line every log_every steps
    t0, window = time.perf_counter() - elapsed, []
    started, first_step = time.perf_counter(), step  # for images/s of this process's own steps
    probe, warned = entropy_batch(data, train_config, model_config, device), set()  # fixed images, heads warned of
    noise = {"noise_std": train_config.noise_std} if latent else {}
    final_options = noise if latent else {"draws": train_config.eval_draws}
    final_evaluation = None  # the last step's evaluation, with the final options: eval.json's
    model.train()
    while step < train_config.steps:
        part = cluster.shard(train_config.batch_size)
        x, y = batch(data, step, train_config, model_config, device, part)
        levels = None
        if model_config.noise_conditioning:  # iTARFlow: x + t eps, one level t per image
            x, levels = add_noise_levels(x, step, train_config, model_config, part)
        result = train_step(run, x, y, step, levels)
        loss, grad_norm, skipped = result.loss, result.grad_norm, result.skipped
        step += 1

        record = {}
        if skipped:
            record["bad_step"] = skipped
            if main:
                bar.write(f"step {step}: skipped, {skipped} "
                          f"({run.bad_steps.in_a_row} in a row; the run stops at {train_config.max_bad_steps})")
        else:
            bpd = loss.item() if latent else (loss.item() - log_bin) / math.log(2)
            window.append(bpd)
            images_per_s = (step - first_step) * train_config.batch_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss.item():.4f}", **{} if latent else {"bpd": f"{bpd:.3f}"},
                            lr=f"{run.scheduler.get_last_lr()[0]:.2e}", images_per_s=f"{images_per_s:.0f}",
                            refresh=False)
        bar.update(1)  # after the postfix, so a log line shows this step's figures
        if (step % train_config.log_every == 0 or step == train_config.steps) and window:
            record.update(loss=loss.item() if not skipped else None,
                          **{"nats_per_dim" if latent else "bpd": sum(window) / len(window)},
                          lr=run.scheduler.get_last_lr()[0], grad_norm=grad_norm.item() if not skipped else None)
            window = []
        evaluating = every(step, train_config.eval_every, train_config.steps)
        sampling = every(step, train_config.sample_every, train_config.steps)
        if evaluating or sampling:
            final = dist.plain_copy(ema if ema is not None else model)
            if evaluating:
                last = step == train_config.steps
                evaluated = evaluate(final, test, model_config, cluster, progress=last and progress and main,
                                     **(final_options if last else noise))
                final_evaluation = evaluated if last else None
                if latent:
                    record["test_nats_per_dim"] = evaluated["latent_nats_per_dim"]
                    if main:
                        bar.write(f"step {step}: test latent nats/dim {record['test_nats_per_dim']:.4f}")
                else:
                    record["test_bpd"] = evaluated["bits_per_dim"]
                    if main:
                        bar.write(f"step {step}: test bits/dim {record['test_bpd']:.4f}")
            if sampling and main:
                grid_file = run_dir / "samples" / f"step_{step:06d}.png"
                sample_grid(final, train_config, model_config, data.levels, grid_file)
                if board is not None:
                    board.samples(grid_file, step)
                    board.scales(final, probe, step)
            model.train()
        if train_config.entropy_every and every(step, train_config.entropy_every, train_config.steps):
            probe_model = dist.plain_copy(model)  # a collective under FSDP: every rank takes part
            if main:
                record.update(entropy_record(probe_model, probe, train_config.entropy_warn, warned, bar.write))
        if record and main:
            record.update(step=step, elapsed_s=round(time.perf_counter() - t0, 3))
            log.write(json.dumps(record) + "\n")
            log.flush()
            if board is not None:
                board.scalars(record)
        if evaluating and main:
            write_report(run_dir)  # RUN/report.html, refreshed at every evaluation
        halt = dist.any_rank(step == stop_at or stop.requested or run.bad_steps.exhausted, device)
        if every(step, train_config.checkpoint_every, train_config.steps) or halt:
            weights, ema_weights = dist.full_state(model), None if ema is None else dist.full_state(ema)
            state = run.state(step, time.perf_counter() - t0, dist.optimizer_state(model, run.optimizer))
            if main:
                save_checkpoint(run_dir, weights, ema_weights, state)
                plot_curves(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
                if train_config.entropy_every:
                    plot_entropy(run_dir / "metrics.jsonl", run_dir / "attention_entropy.png",
                                 train_config.entropy_warn)
        if halt:
            break
    bar.close()
    if log is not None:
        log.close()
    if board is not None:
        board.close()
    raise_if_stopped(stop, run.bad_steps, run_dir, step, train_config)
    if step < train_config.steps:
        return {"step": step}

    final = dist.plain_copy(ema if ema is not None else model)
    metadata = {"dataset": train_config.dataset, "levels": data.levels, "noise": train_config.noise,
                "noise_std": noise_std(train_config, data), "steps": step,
                "sampling": sampling_settings(train_config, model_config)}
    if train_config.dataset == "folder":
        metadata["data_dir"] = train_config.data_dir  # a folder dataset is known only by its path
    if model_config.modality == "video":  # the options that regenerate its clips, and a folder's path
        metadata.update(dataset_options=dataset_options(train_config.dataset, train_config.clip_count))
        if train_config.dataset == "video-folder":
            metadata["data_dir"] = train_config.data_dir
    if main:
        final.save_pretrained(run_dir / "model", metadata)
        sample_grid(final, train_config, model_config, data.levels, run_dir / "samples.png")
    if final_evaluation is None:  # a run resumed after its last step
        final_evaluation = evaluate(final, test, model_config, cluster, progress=progress and main, **final_options)
    result = final_evaluation
    if main and model_config.modality == "video":
        result.update(per_frame_figures(final, test, model_config, train_config.noise_std, progress))
    result.update(dataset=train_config.dataset, split="test", conditional=bool(model_config.num_classes), steps=step,
                  train_time_s=round(time.perf_counter() - t0, 1), device=str(device),
                  processes=cluster.world_size)
    if main:
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        write_report(run_dir)
    return result


def load_data(train_config: TrainConfig, model_config: FlowConfig, cluster: dist.Cluster, progress: bool
              ) -> tuple[ImageData, ImageData]:
    """The train and test splits; rank 0 decodes (or downloads) first, the other ranks then read its cache."""
    size, channels = image_geometry(model_config)  # latents: of the images the autoencoder encodes

    def load(split: str) -> ImageData:
        if model_config.modality == "video":  # clips (N, F, C, H, W), read by the loop as images
            options = dataset_options(train_config.dataset, train_config.clip_count)
            return load_clips(train_config.dataset, split, train_config.data_dir, model_config,
                              progress and cluster.is_main, options)
        return load_dataset(train_config.dataset, split, data_dir=train_config.data_dir or None,
                            image_size=size, channels=channels,
                            on_bad_image=train_config.on_bad_image, progress=progress and cluster.is_main)

    if not cluster.is_main:
        dist.barrier()
    data, test = load("train"), load("test")
    if cluster.is_main:
        dist.barrier()
    return data, test


def evaluate(model: TarFlow, test: ImageData | LatentData, model_config: FlowConfig, cluster: dist.Cluster, **kwargs
             ) -> dict[str, Any]:
    """Test bits/dim, the batches split across the job's processes; for a noise-conditioned model, of the test
    data at the lowest trained noise level t0 (see `metrics.likelihood`); latents: nats/dim, on one process."""
    if isinstance(test, LatentData):
        return evaluate_latent_nll(model, test, labels_for(test, model_config), **kwargs)
    level = model_config.noise_level_min if model_config.noise_conditioning else None
    return evaluate_bpd(model, test.images, labels_for(test, model_config), test.levels, rank=cluster.rank,
                        world_size=cluster.world_size, noise_level=level, **kwargs)


def per_frame_figures(model: TarFlow, test: ImageData | LatentData, model_config: FlowConfig, noise_std: float,
                      progress: bool) -> dict[str, Any]:
    """A video model's figure per frame given the earlier ones, as `tarflow eval` gives it (one dequantization
    draw, or the latents' one draw of the training noise): their mean is the test figure when it has one draw."""
    labels = labels_for(test, model_config)
    if isinstance(test, LatentData):
        return frame_latent_figures(model, test, labels, noise_std, progress=progress)
    return frame_bpd_figures(model, test.images, labels, test.levels, progress=progress)


def check_fits(model_config: FlowConfig, data: ImageData) -> None:
    if (model_config.image_size, model_config.channels) != (data.image_size, data.channels):
        raise ConfigError(f"dataset {data.name!r} has {data.channels}x{data.image_size}x{data.image_size} images "
                          f"but the model is configured for "
                          f"{model_config.channels}x{model_config.image_size}x{model_config.image_size}: "
                          f"set image_size={data.image_size} channels={data.channels}")
    if model_config.num_classes not in (0, data.num_classes):
        raise ConfigError(f"dataset {data.name!r} has {data.num_classes} classes: set num_classes="
                          f"{data.num_classes} (conditional) or 0 (unconditional), not {model_config.num_classes}")


def batch(data: ImageData, step: int, train_config: TrainConfig, model_config: FlowConfig, device: torch.device,
          part: slice = slice(None)):
    """The images and labels of ``step``: a function of (seed, step) only, so a resumed run sees the same batches.

    Epochs are fixed permutations of the training set; the last partial batch of an epoch is dropped.
    This is also the distributed sampler: every process draws the same global batch and keeps its ``part``,
    so the data seen does not depend on the number of processes.
    """
    n = len(data)
    per_epoch = max(1, n // train_config.batch_size)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(train_config.seed * 1_000_003 + epoch))
    idx = order[i * train_config.batch_size:(i + 1) * train_config.batch_size]
    g = torch.Generator().manual_seed(train_config.seed * 1_000_003 + 7_919 * (step + 1))
    if isinstance(data, LatentData):
        x = data.noisy(idx, train_config.noise_std, g)
    else:
        images = flip_batch(data.images[idx], g) if train_config.flip else data.images[idx]
        x = dequantize(images, data.levels, train_config.noise, train_config.noise_std, generator=g)
    if train_config.reverse_time:
        x = reverse_time_batch(x, g)
    y = None
    if model_config.num_classes:
        y = training_condition(data.labels[idx], model_config, train_config.label_dropout, g)[part].to(device)
    return x[part].to(device), y


def entropy_batch(data: ImageData, train_config: TrainConfig, model_config: FlowConfig, device: torch.device,
                  size: int = 16):
    """The fixed images (and labels, no dropout) on which attention entropy is measured during training; for a
    noise-conditioned model also their level, the lowest trained one (the images carry no added noise)."""
    g = torch.Generator().manual_seed(train_config.seed + 12_345)
    idx = torch.randperm(len(data), generator=g)[:size]
    if isinstance(data, LatentData):
        x = data.noisy(idx, train_config.noise_std, g).to(device)
    else:
        x = dequantize(data.images[idx], data.levels, train_config.noise, train_config.noise_std, generator=g).to(device)
    probe = x, data.labels[idx].to(device) if model_config.num_classes else None
    return (*probe, model_config.noise_level_min) if model_config.noise_conditioning else probe


def entropy_record(model: TarFlow, probe, threshold: float, warned: set, say) -> dict[str, Any]:
    """{"attn_entropy": [block][layer][head] nats} and, for heads newly below ``threshold``, a warning
    (said once per head) listed as "entropy_warning": [[block, layer, head], ...]."""
    entropy = attention_entropy(model, *probe)
    record: dict[str, Any] = {"attn_entropy": entropy}
    new = [(b, l, h, e) for b, l, h, e in collapsed_heads(entropy, threshold) if (b, l, h) not in warned]
    for b, l, h, e in new:
        warned.add((b, l, h))
        say(f"warning: attention entropy of block {b} layer {l} head {h} fell to {e:.3f} nats "
            f"(< {threshold:g}): attention-entropy collapse, which often precedes a loss spike")
    if new:
        record["entropy_warning"] = [[b, l, h] for b, l, h, _ in new]
    return record


def labels_for(data: ImageData, model_config: FlowConfig):
    return data.labels if model_config.num_classes else None


def noise_std(train_config: TrainConfig, data: ImageData) -> float:
    """The std of the training noise in model units: sigma, or bin/sqrt(12) for uniform dequantization."""
    return train_config.noise_std if train_config.noise == "gaussian" else bin_width(data.levels) / math.sqrt(12)


def every(step: int, interval: int, last: int) -> bool:
    return step == last or (interval > 0 and step % interval == 0)


def sampling_settings(train_config: TrainConfig, model_config: FlowConfig) -> dict[str, Any]:
    """The settings of the run's sample grids, stored with the model (metadata "sampling") for `tarflow sample`:
    temperature (a video model's first frame's apart, if set), and for a class-conditional model the guidance weight
    and rule."""
    settings: dict[str, Any] = {"temperature": train_config.sample_temperature}
    if train_config.sample_first_frame_temperature:
        settings["first_frame_temperature"] = train_config.sample_first_frame_temperature
    if model_config.num_classes:
        rule = train_config.sample_guidance_rule
        settings.update(guidance=train_config.sample_guidance,
                        guidance_rule=default_rule(model_config) if rule == "auto" else rule)
    return settings


def sample_grid(model: TarFlow, train_config: TrainConfig, model_config: FlowConfig, levels: int, path: Path) -> Path:
    """A grid of ``num_samples`` samples drawn with `sampling_settings`, denoised by one Tweedie step when the
    model was trained with gaussian noise; for a class-conditional model, one class per column."""
    n = train_config.num_samples
    y = torch.arange(n) % model_config.num_classes if model_config.num_classes else None
    settings = sampling_settings(train_config, model_config)
    guided = settings.get("guidance")
    guidance = Guidance(settings["guidance"], settings["guidance_rule"]) if guided else None
    sigma = train_config.noise_std if train_config.noise == "gaussian" and not model_config.noise_conditioning else None
    temperature = frame_temperatures(model, settings["temperature"], settings.get("first_frame_temperature"))
    x = SequentialSampler(model).sample(n, y, temperature, guidance, sigma,
                                        generator=torch.Generator().manual_seed(train_config.seed))
    if model_config.noise_conditioning:  # generated at t1: 10 ODE steps of iterative denoising
        x = IterativeDenoiser().denoise(model, x, y)
    if model_config.latent:
        x = model.modality.decode(x)
    if model_config.modality == "video":
        return save_clips(to_uint8(x, levels), path)
    return save_grid(to_uint8(x, levels), path, nrow=model_config.num_classes or 10)
