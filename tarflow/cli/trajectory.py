"""`tarflow sample` and `tarflow eval` of Normalizing Trajectory Models (architecture=ntm): K-step sampling, and
test bits/dim of the trajectory bound with the bound's name."""

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
    from ..sampling import Guidance, TrajectorySampler
    from ..sampling.guidance import default_rule
    from ..viz import save_grid, to_uint8
    from .options import check_output_file
    from .sample import sample_labels, stored_settings

    refuse_flow_sampling_options(args)
    out = check_output_file(args.out or Path(args.path) / "sample.png", "--out")
    model, _ = load_model(args.path, args.device, trajectory=True)
    config = model.config
    y = sample_labels(config.num_classes, args.label, args.count)
    stored, settings = stored_settings(model, args)
    rule = settings["guidance_rule"] or default_rule(config)
    guidance = None
    if settings["guidance"] or args.attn_temp != 1.0:
        guidance = Guidance(settings["guidance"], rule, args.annealed, args.attn_temp)
    started = time.perf_counter()
    x = TrajectorySampler(model).sample(args.count, y, settings["temperature"], guidance,
                                        generator=torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - started
    save_grid(to_uint8(x, int(model.metadata.get("levels", 256))), out, nrow=config.num_classes or 10)
    how = f"guidance w={settings['guidance']:g} ({rule})" if guidance else "no guidance"
    print(f"{args.count} samples in {seconds:.2f} s with the trajectory sampler ({model.steps} steps), temperature "
          f"{settings['temperature']:g}, {how}{stored} -> {out}")
    return 0


def trajectory_metric_sampler(model, args: argparse.Namespace):
    """The sampler of `fid`, `guidance-accuracy` and `sweep-sampling` for a trajectory model: its K-step
    `TrajectorySampler` (named by its ``describe()``), TarFlow's sampler and denoising options refused by name."""
    from ..sampling import TrajectorySampler

    refuse_flow_sampling_options(args)
    return TrajectorySampler(model)


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
                          f"with its own sampler and needs no denoising")


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
