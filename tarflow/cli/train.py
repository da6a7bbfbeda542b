"""`tarflow train`: train from a preset, or resume a run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from .options import add_config_flags, config_from_args, overrides_given


def check_autoencoder_trained(config) -> None:
    """Refuse a model whose autoencoder is a `tarflow autoencoder train` default run directory that is not there
    yet (the latent presets'), naming the command that makes it."""
    path = Path(config.model.autoencoder).expanduser()
    if not config.model.autoencoder or path.exists() or not path.name.startswith("autoencoder-"):
        return
    dataset = path.name.removeprefix("autoencoder-")
    data_dir = f" --data-dir {config.train.data_dir}" if config.train.data_dir else ""
    raise ConfigError(f"the autoencoder {path} is not trained yet: train it first with `tarflow autoencoder train "
                      f"--dataset {dataset}{data_dir} --out {path}` (the latent presets expect it there), or give "
                      f"another with --autoencoder DIR")


def cmd_train(args: argparse.Namespace) -> int:
    from .. import train as training
    from ..train.config import RUNTIME_FIELDS
    from ..train.faults import TrainingStopped

    if args.resume:
        given = [name for name in overrides_given(args) if name not in RUNTIME_FIELDS]
        if given or args.preset:
            refused = "--preset" if args.preset else "--" + given[0].replace("_", "-")
            allowed = ", ".join("--" + name.replace("_", "-") for name in RUNTIME_FIELDS)
            raise ConfigError(f"--resume continues a run with its saved config; do not combine it with {refused}"
                              f" (only {allowed} may change)")
        config, run_dir = training.load_run_config(args.resume), Path(args.resume)
        for name in RUNTIME_FIELDS:
            if getattr(args, f"train.{name}") is not None:
                setattr(config.train, name, getattr(args, f"train.{name}"))
    else:
        args.preset = args.preset or "digits"
        config = config_from_args(args)
        run_dir = Path(args.out or f"runs/{args.preset}")
        check_autoencoder_trained(config)
    try:
        result = training.train(config, run_dir, progress=not args.no_progress)
    except TrainingStopped as e:  # a signal or too many non-finite steps: a checkpoint is saved
        print(f"tarflow: {e}", file=sys.stderr)
        return e.exit_code
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    if "bits_per_char" in result:
        print(f"test bits/char: {result['bits_per_char']:.4f} ± {result['stderr']:.4f} ({result['bound']}; "
              f"{result['chars']:,} test characters)")
        print(f"run directory: {run_dir}  (model/, samples.txt, metrics.jsonl, eval.json)")
        return 0
    if "text_bits_per_word" in result:  # a pretzel model: its words and its images
        from ..train.interleaved import say_figures

        noisy = config.train.noise == "gaussian" and result["image_bits_per_dim"] is not None
        print(f"test {say_figures(result)} ({result['sequences']:,} test sequences"
              f"{'; images with gaussian noise, so not a bits/dim of the data' if noisy else ''})")
        samples = "samples/, " if config.train.single_modality != "text" else ""  # a text baseline draws none
        print(f"run directory: {run_dir}  (model/, {samples}metrics.jsonl, eval.json)")
        return 0
    if "trajectory_steps" in result:  # a Normalizing Trajectory Model: bits/dim of its bound
        print(f"test bits/dim: {result['bits_per_dim']:.4f} ± {result['stderr']:.4f} ({result['bound']}; "
              f"{result['images']} {config.train.dataset} test images, {result['draws']} draw(s))")
    elif "latent_nats_per_dim" in result:  # a continuous density of latents: not bits/dim, not comparable with pixels
        print(f"test latent nats/dim: {result['latent_nats_per_dim']:.4f} ± {result['stderr']:.4f} "
              f"({result['images']} {config.train.dataset} test images, latents + noise of the training std)")
    else:
        print(f"test bits/dim: {result['bits_per_dim']:.4f} ± {result['stderr']:.4f} "
              f"({result['images']} {config.train.dataset} test images, {result['draws']} dequantization draw(s))")
    print(f"run directory: {run_dir}  (report.html, model/, samples.png, loss_curve.png, metrics.jsonl, eval.json)")
    return 0


def add_train_parser(sub) -> None:
    parser = sub.add_parser("train", help="train a model (no arguments: the default preset on digits)",
                            description="Train from a preset, overriding any field. A run directory that already "
                            "holds a checkpoint of the same config is resumed.")
    parser.add_argument("--preset", default=None,
                        help="named config to start from (default digits; see `tarflow presets`)")
    parser.add_argument("--out", default=None, help="run directory (default runs/PRESET)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR with its saved config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(parser)
    parser.set_defaults(func=cmd_train)
