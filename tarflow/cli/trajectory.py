"""`tarflow sample` and `tarflow eval` of Normalizing Trajectory Models (architecture=ntm): K-step sampling (with the
self-distilled denoiser when the model directory has one), test bits/dim of the trajectory bound with the bound's
name, the sampler of the metric commands, and `tarflow distill-denoiser`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import ConfigError


def cmd_sample_trajectory(args: argparse.Namespace) -> int:
    """A grid of samples drawn in K steps; guidance and temperature as for TarFlow (flags, else the stored ones)."""
    import torch

    from ..runs import load_model
    from ..sampling import Guidance
    from ..sampling.guidance import default_rule
    from ..viz import save_grid, to_uint8
    from .options import check_output_file
    from .sample import sample_labels, stored_settings

    refuse_flow_sampling_options(args)
    out = check_output_file(args.out or Path(args.path) / "sample.png", "--out")
    model, model_dir = load_model(args.path, args.device, trajectory=True)
    sampler = trajectory_metric_sampler(model, model_dir, args)
    config = model.config
    y = sample_labels(config.num_classes, args.label, args.count)
    stored, settings = stored_settings(model, args)
    rule = settings["guidance_rule"] or default_rule(config)
    guidance = None
    if settings["guidance"] or args.attn_temp != 1.0:
        guidance = Guidance(settings["guidance"], rule, args.annealed, args.attn_temp)
    started = time.perf_counter()
    x = sampler.sample(args.count, y, settings["temperature"], guidance,
                       generator=torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - started
    save_grid(to_uint8(x, int(model.metadata.get("levels", 256))), out, nrow=config.num_classes or 10)
    how = f"guidance w={settings['guidance']:g} ({rule})" if guidance else "no guidance"
    denoised = "the self-distilled denoiser" if sampler.denoiser else "no denoiser"
    print(f"{args.count} samples in {seconds:.2f} s with the trajectory sampler ({model.steps} steps), {denoised}, "
          f"temperature {settings['temperature']:g}, {how}{stored} -> {out}")
    return 0


def trajectory_metric_sampler(model, model_dir: Path, args: argparse.Namespace):
    """The sampler of `sample`, `fid`, `guidance-accuracy` and `sweep-sampling` for a trajectory model: its K-step
    `TrajectorySampler` (named by its ``describe()``) with the model directory's self-distilled denoiser unless
    --denoise none; TarFlow's sampler and denoising options refused by name."""
    from ..sampling import TrajectorySampler
    from ..sampling.trajectory_denoiser import load_denoiser

    refuse_flow_sampling_options(args)
    denoiser = None if getattr(args, "denoise", None) == "none" else load_denoiser(model, model_dir)
    return TrajectorySampler(model, denoiser)


def sweep_sampler_name(sampler) -> str:
    """The sampler's name in a sweep's cache key: with a denoiser, a hash of its weights too."""
    from ..metrics.sweep import weights_sha256

    if sampler.denoiser is None:
        return sampler.describe()
    return f"{sampler.describe()} ({weights_sha256(sampler.denoiser)[:16]})"


def refuse_flow_sampling_options(args: argparse.Namespace) -> None:
    """The samplers and denoisers of `tarflow sample` and the metric commands are TarFlow's: a trajectory model
    refuses them by name (a command without one of the options has it None)."""
    def given_option(name: str):
        return getattr(args, name, None)

    given = [flag for flag, used in (("--sampler", given_option("sampler") not in (None, "auto", "sequential")),
                                     ("--calibration", given_option("calibration") is not None),
                                     ("--modules", given_option("modules") is not None),
                                     ("--denoise", given_option("denoise") not in (None, "none")),
                                     ("--denoise-steps", given_option("denoise_steps") is not None),
                                     ("--dynamics", given_option("dynamics") is not None),
                                     ("--denoise-clip", bool(given_option("denoise_clip")))) if used]
    if given:
        raise ConfigError(f"{given[0]} does not apply to a Normalizing Trajectory Model: it samples in its K steps "
                          f"with its own sampler, and its only denoising is its self-distilled denoiser (`tarflow "
                          f"distill-denoiser`; --denoise none skips it)")


def cmd_eval_trajectory(args: argparse.Namespace) -> int:
    """Bits/dim of the trajectory bound on a split, with the bound's name, as JSON."""
    from ..data import load_dataset
    from ..metrics.model_data import check_data_fits
    from ..metrics.trajectory import evaluate_trajectory_bound
    from ..runs import load_model

    for flag, used in (("--prior", args.prior is not None), ("--noise-level", args.noise_level is not None),
                       ("--extrapolate", args.extrapolate)):
        if used:
            raise ConfigError(f"{flag} does not apply to a Normalizing Trajectory Model: its figure is the bound on "
                              f"the clean data's bits/dim")
    model, model_dir = load_model(args.path, args.device, trajectory=True)
    name = args.dataset or model.metadata.get("dataset")
    if not name:
        raise ConfigError(f"{model_dir} does not record its dataset: pass --dataset")
    data_dir = args.data_dir if args.data_dir is not None else model.metadata.get("data_dir")
    data = load_dataset(name, args.split, data_dir=data_dir, image_size=model.config.image_size,
                        channels=model.config.channels, progress=not args.no_progress)
    check_data_fits(model, data, name)
    labels = data.labels if model.config.num_classes else None
    result = evaluate_trajectory_bound(model, data.images, labels, data.levels, draws=args.draws, seed=args.seed,
                                       progress=not args.no_progress)
    result.update(dataset=name, split=args.split, conditional=bool(model.config.num_classes), model=str(model_dir))
    print(json.dumps(result, indent=2))
    return 0


def cmd_distill_denoiser(args: argparse.Namespace) -> int:
    """Distill the model's denoiser from its own trajectories and score; save it in the model directory."""
    from ..runs import load_model
    from ..sampling import Guidance
    from ..sampling.guidance import default_rule
    from ..sampling.small_denoiser import loss_summary
    from ..sampling.trajectory_denoiser import DENOISER, distill_denoiser
    from .sample import stored_settings

    model, model_dir = load_model(args.path, args.device, trajectory=True)
    if model.config.architecture != "ntm":
        raise ConfigError(f"{args.path} holds a TarFlow model: distill-denoiser is for Normalizing Trajectory Models "
                          f"(architecture=ntm); a video model trained with gaussian noise has `tarflow "
                          f"fit-score-denoiser`")
    stored, settings = stored_settings(model, args)  # the trajectories it learns on: drawn as they will be sampled
    rule = settings["guidance_rule"] or default_rule(model.config)
    guidance = Guidance(settings["guidance"], rule) if settings["guidance"] else None
    started = time.perf_counter()
    denoiser, losses = distill_denoiser(model, args.steps, args.batch_size, args.lr, args.width, args.layers,
                                        args.sigma, args.seed, guidance, settings["temperature"],
                                        progress=not args.no_progress)
    out = denoiser.save_pretrained(model_dir / DENOISER)
    config = denoiser.config
    print(json.dumps({"out": str(out), "steps": args.steps, "sigma": config.sigma, "guidance": config.guidance,
                      "guidance_rule": config.guidance_rule if config.guidance else None,
                      "temperature": config.temperature, "settings": stored.strip(" ()") or "flags and defaults",
                      "seconds": round(time.perf_counter() - started, 1), **loss_summary(losses)}, indent=2))
    return 0


def add_distill_denoiser_parser(sub) -> None:
    from .options import DEVICE_HELP, RULE_HELP, number

    parser = sub.add_parser("distill-denoiser", help="Normalizing Trajectory Models: distill a small denoiser from "
                            "the model's own samples and last-step score (self-distillation, docs/ntm.md), saved as "
                            "MODEL_DIR/denoiser; `tarflow sample` and the metrics then use it (--denoise none skips "
                            "it)")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--steps", type=number(int, minimum=1), default=500, help="training steps (default 500)")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=16,
                        help="trajectories sampled per step (default 16)")
    parser.add_argument("--lr", type=number(float, above=0), default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--width", type=number(int, minimum=2), default=64, help="Transformer width (default 64)")
    parser.add_argument("--layers", type=number(int, minimum=1), default=2, help="Transformer layers (default 2)")
    parser.add_argument("--sigma", type=number(float, above=0), default=None,
                        help="noise std removed, in model units ([-1, 1] images) (default: the dequantization "
                        "noise's, 2 / levels / sqrt(12))")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="sampling and label seed (default 0)")
    parser.add_argument("--guidance", type=number(float, minimum=0), default=None,
                        help="guidance weight of the trajectories it learns on (default: the model's stored sampling "
                        "setting, else 0): distill at the setting you will sample with")
    parser.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default=None, help=RULE_HELP)
    parser.add_argument("--temperature", type=number(float, above=0), default=None,
                        help="prior temperature of those trajectories (default: the stored setting, else 1)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_distill_denoiser)
