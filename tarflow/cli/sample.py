"""`tarflow sample`: a grid of samples, and the choice of sampler that every sampling command shares."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from .options import (DEVICE_HELP, add_denoise_options, add_first_frame_temperature_option, add_sampler_options,
                      add_stored_guidance_options, check_output_file, number, parse_label)
from .video import add_video_sample_options, sample_video


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ..runs import is_trajectory_model, load_model
    from ..sampling import DenoisedSampler, Guidance
    from ..sampling.guidance import default_rule
    from ..viz import save_grid, to_uint8
    from .trajectory import cmd_sample_trajectory

    if is_trajectory_model(args.path):
        return cmd_sample_trajectory(args)
    out = check_output_file(args.out or Path(args.path) / "sample.png", "--out")
    model, model_dir = load_model(args.path, args.device)
    metadata, config = model.metadata, model.config
    levels = int(metadata.get("levels", 256))
    y, count, nrow = sample_conditions(config, args.label, args.prompt, args.count)
    stored, settings = stored_settings(model, args)
    guidance = None
    rule = settings["guidance_rule"] or default_rule(config)
    if settings["guidance"] or args.attn_temp != 1.0:
        guidance = Guidance(settings["guidance"], rule, args.annealed, args.attn_temp)
    denoiser, sigma, denoised = choose_denoiser(model, args)
    sampler, why = choose_sampler(model, model_dir, args.sampler, count, guidance, args.calibration, args.tol,
                                  args.modules)
    if denoiser is not None:
        sampler = DenoisedSampler(sampler, denoiser)
    learned = None  # a latent model's fine-tuned decoder replaces the default Tweedie step (not --denoise tweedie)
    if config.modality == "latents" and sigma and args.denoise is None:
        learned = model.modality.denoising_decoder(sigma)
        denoised = f"on (sigma={sigma:.4g}, fine-tuned decoder)" if learned else denoised
    if config.modality == "video":  # clips: a frame strip and a GIF; continued from --first-frames
        seconds, what = sample_video(args, model, sampler, y, settings, guidance, sigma, levels, out)
        first = settings["first_frame_temperature"]
        temperature = f"temperature {settings['temperature']:g}" + (f" (first frame {first:g})" if first else "")
        print(f"{args.count} {what} in {seconds:.2f} s with the {why}, {temperature}, "
              f"denoise {denoised}{stored} -> {out} and {out.with_suffix('.gif')}")
        return 0
    if args.first_frames is not None or args.frames is not None or args.score_denoiser is not None or args.clips_dir \
            or args.first_frame_temperature is not None:
        raise ConfigError("--first-frames, --frames, --score-denoiser, --clips-dir and --first-frame-temperature "
                          "apply to video models (modality=video)")
    started = time.perf_counter()
    x = sampler.sample(count, y, settings["temperature"], guidance, None if learned else sigma,
                       generator=torch.Generator().manual_seed(args.seed))
    if config.modality == "latents":  # images of the autoencoder; a fine-tuned decoder denoises instead of Tweedie
        x = model.modality.decode(x, learned)
    seconds = time.perf_counter() - started
    save_grid(to_uint8(x, levels), out, nrow=nrow)
    how = f"guidance w={settings['guidance']:g} ({rule})" if guidance else "no guidance"
    print(f"{count} samples in {seconds:.2f} s with the {why}, temperature {settings['temperature']:g}, {how}, "
          f"denoise {denoised}{stored} -> {out}")
    return 0


def stored_settings(model, args: argparse.Namespace) -> tuple[str, dict]:
    """The guidance weight, rule, temperature and first frame's temperature (video) to sample with: each flag given,
    else the setting stored with the model (metadata "sampling": those of its run's sample grids, or a preset's
    recommendation), else no guidance and temperature 1; and a phrase naming the stored settings used ("" if
    none)."""
    stored = model.metadata.get("sampling", {})
    given = {"guidance": args.guidance, "guidance_rule": args.guidance_rule, "temperature": args.temperature,
             "first_frame_temperature": getattr(args, "first_frame_temperature", None)}
    defaults = {"guidance": 0.0, "guidance_rule": None, "temperature": 1.0, "first_frame_temperature": None}
    used = [name for name, value in given.items() if value is None and name in stored]
    settings = {name: value if value is not None else stored.get(name, defaults[name])
                for name, value in given.items()}
    if not settings["guidance"] and "guidance_rule" in used:  # the rule of no guidance says nothing
        used.remove("guidance_rule")
    if not used:
        return "", settings
    return (" (stored with the model: " + ", ".join(f"{name.replace('_', ' ')} {stored[name]}" for name in used)
            + "; flags override)"), settings


def choose_denoiser(model, args: argparse.Namespace) -> tuple[object, float | None, str]:
    """(the `IterativeDenoiser` or None, the sigma of a one-step Tweedie or None, a phrase saying which).

    Default: iterative for a noise-conditioned model (generated at its highest level t1), tweedie for a model
    trained with gaussian noise, none otherwise.
    """
    from ..sampling import IterativeDenoiser

    config, metadata = model.config, model.metadata
    default = "tweedie" if metadata.get("noise") == "gaussian" else "none"
    denoise = args.denoise or ("iterative" if config.noise_conditioning else default)
    if denoise != "iterative" and (args.denoise_steps is not None or args.dynamics is not None or args.denoise_clip):
        raise ConfigError(f"--denoise-steps, --dynamics and --denoise-clip apply to --denoise iterative only "
                          f"(denoising here: {denoise})")
    if denoise == "iterative":
        if not config.noise_conditioning:
            raise ConfigError("--denoise iterative needs a noise-conditioned model (iTARFlow, trained with "
                              "noise_conditioning=true); this one was trained at one noise level: use --denoise "
                              "tweedie")
        denoiser = IterativeDenoiser(args.denoise_steps or 10, args.dynamics or "ode", args.denoise_clip)
        return denoiser, None, (f"iterative ({denoiser.steps} {denoiser.dynamics} steps, t {config.noise_level_max:g} "
                                f"-> {config.noise_level_min:g} -> 0{', clipped' if denoiser.clip else ''})")
    if denoise == "none":
        return None, None, "off"
    sigma = config.noise_level_max if config.noise_conditioning else float(metadata.get("noise_std", 0.0))
    if not sigma:
        raise ConfigError("--denoise needs the training noise std, which this model's metadata lacks")
    return None, sigma, f"on (sigma={sigma:.4g})"


def sample_conditions(config, label: int | str | None, prompts: list[str] | None, count: int):
    """(y, count, grid columns) of `tarflow sample`: ``prompts`` (caption-conditioned models) give one grid row each,
    ``count`` samples split evenly among them; otherwise `sample_labels`."""
    if not prompts:
        return sample_labels(config.num_classes, label, count), count, config.num_classes or 10
    if not config.text_encoder:
        raise ConfigError("--prompt needs a caption-conditioned model (trained with text_encoder set, e.g. the "
                          "digits-text or mnist-text preset); this model has no text encoder: use --label")
    if label is not None:
        raise ConfigError("give --prompt or --label, not both")
    per_prompt = count // len(prompts)
    if not per_prompt:
        raise ConfigError(f"--count {count} is fewer than the {len(prompts)} prompts: give at least one sample each")
    return [prompt for prompt in prompts for _ in range(per_prompt)], per_prompt * len(prompts), per_prompt


def sample_labels(num_classes: int, label: int | str | None, count: int):
    """The labels of ``count`` samples: ``label`` for all, classes in turn (None), or none (unconditional).

    ``label`` ``null`` or ``num_classes`` is the null class: unconditional samples of a conditional model.
    """
    import torch

    if not num_classes:
        if label is not None:
            raise ConfigError("--label needs a class-conditional model; this one is unconditional")
        return None
    label = num_classes if label == "null" else label
    if label is None:
        return torch.arange(count) % num_classes
    if not 0 <= label <= num_classes:
        raise ConfigError(f"--label must be in 0..{num_classes - 1}, or {num_classes} or null for the null class "
                          f"(unconditional samples), got {label}")
    return torch.full((count,), label)


def choose_sampler(model, model_dir: Path, name: str, batch: int, guidance, calibration: str | None = None,
                   tol: float = 1e-5, modules: int | None = None) -> tuple[object, str]:
    """The sampler ``--sampler name`` asks for, and a phrase saying which it is and why.

    ``auto`` reads the calibration of this device, ``batch`` and guidance setting (from ``calibration``, or the
    model directory's sampling.json) and never writes; without one it is the exact sequential sampler, and a
    line on stderr says how to calibrate.
    """
    from ..sampling import GSJacobiSampler, JacobiSampler, SequentialSampler, VideoJacobiSampler
    from ..sampling.calibrate import auto_sampler, calibration_file, device_key

    if calibration is not None and name != "auto":
        raise ConfigError("--calibration applies to --sampler auto only")
    if name == "sequential":
        return SequentialSampler(model), "sequential sampler (exact, KV cache; --sampler sequential)"
    if name == "jacobi":
        sampler = JacobiSampler(model, tol=tol)
        return sampler, f"{sampler.describe()} sampler (--sampler jacobi)"
    if name == "video-jacobi":
        sampler = VideoJacobiSampler(model, tol=tol)
        return sampler, f"{sampler.describe()} sampler (--sampler video-jacobi)"
    if name == "gs-jacobi":
        sampler = GSJacobiSampler(model, tol=tol, modules=modules)
        return sampler, f"{sampler.describe()} sampler (--sampler gs-jacobi)"
    if modules is not None:
        raise ConfigError("--modules applies to --sampler gs-jacobi only")
    file = calibration_file(model_dir if calibration is None else calibration)
    if calibration is not None and not file.is_file():
        raise ConfigError(f"--calibration {calibration}: no calibration file there; write one with "
                          f"`tarflow calibrate RUN_OR_MODEL_DIR --out FILE`")
    sampler, entry = auto_sampler(model, file, batch, guidance)
    if entry is None:
        setting = "guided" if guidance else "unguided"
        print(f"tarflow: no sampler calibration for {device_key(model.device)}, batch {batch}, {setting} in {file}: "
              f"using the exact sequential sampler; `{calibrate_command(model_dir, batch, guidance)}` measures a "
              f"faster one", file=sys.stderr)
        return sampler, "sequential sampler (exact, KV cache), chosen automatically (no calibration for this " \
                        "device and batch size)"
    described = sampler.describe() if hasattr(sampler, "describe") else "sequential (exact, KV cache)"
    return sampler, f"{described} sampler, chosen automatically (from {file}: {entry['reason']})"


def sampler_per_guidance(model, model_dir: Path, args: argparse.Namespace, batch: int, decoding=None):
    """``sampler_for(guidance)`` for the metric commands that draw with several settings: `choose_sampler`'s
    choice (and at most one note) once for guided and once for unguided settings, wrapped by a latent model's
    ``decoding`` (see cli/latents.py) when given. A trajectory model: its K-step sampler for every setting."""
    from .trajectory import trajectory_metric_sampler

    if model.config.architecture == "ntm":
        sampler = trajectory_metric_sampler(model, model_dir, args)
        return lambda guidance: sampler
    samplers = {}

    def sampler_for(guidance):
        if (guidance is None) not in samplers:
            sampler = choose_sampler(model, model_dir, args.sampler, batch, guidance, args.calibration)[0]
            samplers[guidance is None] = decoding.wrap(sampler) if decoding else sampler
        return samplers[guidance is None]

    return sampler_for


def calibrate_command(model_dir: Path, batch: int, guidance) -> str:
    """The `tarflow calibrate` command line that measures the entry ``choose_sampler`` looked for."""
    command = f"tarflow calibrate {model_dir} --count {batch}"
    if guidance is not None:
        command += f" --guidance {guidance.weight:g}" if guidance.weight else ""
        command += f" --attn-temp {guidance.attn_temp:g}" if guidance.attn_temp != 1.0 else ""
    return command


def add_sample_parser(sub) -> None:
    parser = sub.add_parser("sample", help="draw a grid of samples from a trained model")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_OR_MODEL_DIR/sample.png)")
    parser.add_argument("--count", type=number(int, minimum=1), default=100, help="number of samples (default 100)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="noise seed (default 0)")
    parser.add_argument("--label", type=parse_label, default=None, metavar="{K,null}",
                        help="class of every sample (default: cycle through the classes); null, or the class count, "
                        "is the null class: unconditional samples of a class-conditional model")
    parser.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                        help="caption-conditioned models: a caption, e.g. \"a handwritten seven\"; repeat for more, "
                        "one grid row each (--count samples in all, split evenly)")
    parser.add_argument("--temperature", type=number(float, above=0), default=None,
                        help="scale of the prior noise, > 0 (default: the model's stored setting, else 1)")
    add_first_frame_temperature_option(parser)
    add_stored_guidance_options(parser)
    parser.add_argument("--annealed", action="store_true", help="anneal w from 0 at the first token to w at the last")
    parser.add_argument("--attn-temp", type=number(float, above=0), default=1.0,
                        help="attention temperature of the unconditional branch (guides unconditional models too)")
    add_denoise_options(parser, "tweedie (also --denoise alone): one Tweedie step x + sigma^2 grad log p(x) with "
                        "the training noise std (a noise-conditioned model: at its highest level t1); iterative: "
                        "iTARFlow's denoising from t1 down to t0 and 0 with the model's score at each level "
                        "(noise-conditioned models); none. Default: iterative for noise-conditioned models, tweedie "
                        "for models trained with gaussian noise, else none")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_sampler_options(parser)
    add_video_sample_options(parser)
    parser.add_argument("--tol", type=number(float, minimum=0), default=1e-5,
                        help="relative-change tolerance of a forced jacobi / gs-jacobi sampler (default 1e-5)")
    parser.add_argument("--modules", type=number(int, minimum=1), default=None,
                        help="modules per block of a forced gs-jacobi sampler (default about sqrt(tokens))")
    parser.set_defaults(func=cmd_sample)
