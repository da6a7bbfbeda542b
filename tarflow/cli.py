"""`tarflow train | sample | eval | presets`: the command line, a thin layer over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from . import __version__
from .configs import field_types, unknown_field_error
from .errors import ConfigError, TarflowError
from .flows import FlowConfig
from .train.config import RunConfig, TrainConfig

SECTIONS = {"model": FlowConfig, "train": TrainConfig}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (--batch-size), with the field's help text and the default preset's value."""
    from .presets import DEFAULT_PRESET, get_preset

    preset = get_preset(DEFAULT_PRESET)
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} config (override any field of the preset)")
        types, defaults = field_types(cls), getattr(preset, section)
        for f in dataclasses.fields(cls):
            kind, choices = types[f.name], f.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else kind.__name__.upper()
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{section}.{f.name}", type=kind, default=None,
                               metavar=metavar, choices=choices,
                               help=f"{f.metadata['help']} ({DEFAULT_PRESET}: {getattr(defaults, f.name)!r})")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    from .presets import get_preset

    base = get_preset(args.preset).to_dict()
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".")
            base[section][name] = value
    return RunConfig.from_dict(base)


def overrides_given(args: argparse.Namespace) -> list[str]:
    return [k.split(".")[1] for k, v in vars(args).items() if "." in k and v is not None]


def resolve_model_dir(path: str) -> Path:
    """A run directory (its ``model/``) or a saved model directory."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path} does not exist: give a run directory (from `tarflow train`) or a saved model "
                          f"directory (config.json + model.safetensors)")
    if (p / "model.safetensors").exists() or (p / "config.json").exists() and not (p / "metrics.jsonl").exists():
        return p
    if (p / "model").is_dir() or (p / "model.old").is_dir():
        return p / "model"
    if (p / "checkpoint").exists():
        raise ConfigError(f"{path} holds an unfinished training run (no model/ yet); finish it with "
                          f"`tarflow train --resume {path}`")
    raise ConfigError(f"{path} is neither a run directory nor a saved model directory (config.json + model.safetensors)")


# ----- commands ----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .train import load_run_config, train
    from .train.faults import TrainingStopped

    if args.resume:
        given = [k for k in overrides_given(args) if k != "device"]
        if given or args.preset:
            raise ConfigError(f"--resume continues a run with its saved config; do not combine it with "
                              f"{'--preset' if args.preset else '--' + given[0].replace('_', '-')}"
                              f" (only --device may change)")
        config, run_dir = load_run_config(args.resume), Path(args.resume)
        if getattr(args, "train.device") is not None:
            config.train.device = getattr(args, "train.device")
    else:
        args.preset = args.preset or "digits"
        config = config_from_args(args)
        run_dir = Path(args.out or f"runs/{args.preset}")
    try:
        result = train(config, run_dir, progress=not args.no_progress)
    except TrainingStopped as e:  # a signal or too many non-finite steps: a checkpoint is saved
        print(f"tarflow: {e}", file=sys.stderr)
        return e.exit_code
    print(f"test bits/dim: {result['bits_per_dim']:.4f} ± {result['stderr']:.4f} "
          f"({result['images']} {config.train.dataset} test images, {result['draws']} dequantization draw(s))")
    print(f"run directory: {run_dir}  (model/, samples.png, loss_curve.png, metrics.jsonl, eval.json)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .flows import TarFlow
    from .sampling import Guidance
    from .train.device import pick_device
    from .viz import save_grid, to_uint8

    model_dir = resolve_model_dir(args.path)
    model = TarFlow.from_pretrained(model_dir, map_location=pick_device(args.device))
    meta, c = model.metadata, model.config
    levels = int(meta.get("levels", 256))
    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}")
    y = None
    if c.num_classes:
        if args.label is not None and not 0 <= args.label < c.num_classes:
            raise ConfigError(f"--label must be in 0..{c.num_classes - 1}, got {args.label}")
        y = torch.full((args.count,), args.label) if args.label is not None else torch.arange(args.count) % c.num_classes
    elif args.label is not None:
        raise ConfigError("--label needs a class-conditional model; this one is unconditional")
    guidance = None
    if args.guidance or args.attn_temp != 1.0:
        guidance = Guidance(args.guidance, args.guidance_rule, args.annealed, args.attn_temp)
    denoise = args.denoise if args.denoise is not None else meta.get("noise") == "gaussian"
    sigma = float(meta.get("noise_std", 0.0)) if denoise else None
    if denoise and not sigma:
        raise ConfigError("--denoise needs the training noise std, which this model's metadata lacks")
    sampler, why = choose_sampler(model, model_dir, args, guidance)
    t0 = time.perf_counter()
    x = sampler.sample(args.count, y, args.temperature, guidance, sigma,
                       generator=torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - t0
    out = Path(args.out) if args.out else Path(args.path) / "sample.png"
    save_grid(to_uint8(x, levels), out, nrow=c.num_classes or 10)
    how = f"guidance w={args.guidance} ({args.guidance_rule})" if guidance else "no guidance"
    print(f"{args.count} samples in {seconds:.2f} s with the {why}, "
          f"temperature {args.temperature}, {how}, denoise {'on (sigma=%.4g)' % sigma if denoise else 'off'} -> {out}")
    return 0


def choose_sampler(model, model_dir: Path, args: argparse.Namespace, guidance) -> tuple[object, str]:
    """The sampler ``--sampler`` asks for, and a phrase saying which it is and why."""
    from .sampling import GSJacobiSampler, JacobiSampler, SequentialSampler
    from .sampling.calibrate import SAMPLING_NAME, auto_sampler

    if args.tol < 0:
        raise ConfigError(f"--tol must be non-negative, got {args.tol}")
    if args.modules is not None and args.modules < 1:
        raise ConfigError(f"--modules must be at least 1, got {args.modules}")
    if args.sampler == "sequential":
        return SequentialSampler(model), "sequential sampler (exact, KV cache; --sampler sequential)"
    if args.sampler == "jacobi":
        s = JacobiSampler(model, tol=args.tol)
        return s, f"{s.describe()} sampler (--sampler jacobi)"
    if args.sampler == "gs-jacobi":
        s = GSJacobiSampler(model, tol=args.tol, modules=args.modules)
        return s, f"{s.describe()} sampler (--sampler gs-jacobi)"
    if args.modules is not None:
        raise ConfigError("--modules applies to --sampler gs-jacobi only")
    log = (lambda msg: print(f"  calibration: {msg}")) if args.verbose else None
    sampler, entry, fresh = auto_sampler(model, model_dir, args.count, guidance, args.recalibrate, log=log)
    where = "calibrated now" if fresh else f"from {model_dir / SAMPLING_NAME}"
    name = sampler.describe() if hasattr(sampler, "describe") else "sequential (exact, KV cache)"
    return sampler, f"{name} sampler, chosen automatically ({where}: {entry['reason']})"


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .flows import TarFlow
    from .metrics import evaluate_bpd
    from .train.device import pick_device

    model_dir = resolve_model_dir(args.path)
    model = TarFlow.from_pretrained(model_dir, map_location=pick_device(args.device))
    name = args.dataset or model.metadata.get("dataset")
    if not name:
        raise ConfigError(f"{model_dir} does not record its dataset: pass --dataset")
    data = load_dataset(name, args.split)
    c = model.config
    if (data.channels, data.image_size) != (c.channels, c.image_size):
        raise ConfigError(f"dataset {name!r} has {data.channels}x{data.image_size}x{data.image_size} images, the model "
                          f"expects {c.channels}x{c.image_size}x{c.image_size}")
    if args.draws < 1:
        raise ConfigError(f"--draws must be at least 1, got {args.draws}")
    labels = data.labels if c.num_classes else None
    result = evaluate_bpd(model, data.images, labels, data.levels, draws=args.draws, seed=args.seed,
                          mixture=bool(c.num_classes) and args.mixture, progress=not args.no_progress)
    result.update(dataset=name, split=args.split, conditional=bool(c.num_classes), model=str(model_dir))
    print(json.dumps(result, indent=2))
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    from .flows.reference import convert_reference_state, load_reference_state

    if args.noise_std is not None and args.noise_std < 0:
        raise ConfigError(f"--noise-std must be non-negative, got {args.noise_std}")
    meta = {"imported_from": "apple/ml-tarflow", "source": str(Path(args.checkpoint).resolve()),
            "levels": args.levels}
    if args.noise_std:
        meta.update(noise="gaussian", noise_std=args.noise_std)
    state = load_reference_state(args.checkpoint)
    model = convert_reference_state(state, args.patch_size, args.channels, args.head_dim, args.num_classes, meta)
    model.save_pretrained(args.out, metadata=meta)
    c = model.config
    print(f"imported {args.checkpoint}: {c.image_size}x{c.image_size}x{c.channels}, patch {c.patch_size}, width {c.width}, "
          f"{c.num_blocks} blocks x {c.layers_per_block} layers, head dim {c.head_dim}, {c.transform}, "
          f"{c.num_classes or 'no'} classes -> {args.out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import PRESETS

    print(json.dumps(PRESETS if args.verbose else {k: v["train"]["dataset"] for k, v in PRESETS.items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tarflow", description="Transformer autoregressive normalizing flows: "
                                "train, sample and evaluate exact-likelihood image models.")
    p.add_argument("--version", action="version", version=f"tarflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (no arguments: the default preset on digits)",
                       description="Train from a preset, overriding any field. A run directory that already holds "
                       "a checkpoint of the same config is resumed.")
    t.add_argument("--preset", default=None, help="named config to start from (default digits; see `tarflow presets`)")
    t.add_argument("--out", default=None, help="run directory (default runs/PRESET)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw a grid of samples from a trained model")
    s.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    s.add_argument("--out", default=None, help="PNG path (default RUN_OR_MODEL_DIR/sample.png)")
    s.add_argument("--count", type=int, default=100, help="number of samples (default 100)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--label", type=int, default=None, help="class of every sample (default: cycle through classes)")
    s.add_argument("--temperature", type=float, default=1.0, help="scale of the prior noise (default 1.0)")
    s.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w (default 0)")
    s.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default="tarflow", help="guidance rule")
    s.add_argument("--annealed", action="store_true", help="anneal w from 0 at the first token to w at the last")
    s.add_argument("--attn-temp", type=float, default=1.0,
                   help="attention temperature of the unconditional branch (guides unconditional models too)")
    s.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="one Tweedie denoising step (default: on for models trained with gaussian noise)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    s.add_argument("--sampler", choices=("auto", "sequential", "jacobi", "gs-jacobi"), default="auto",
                   help="auto (default): the fastest exact-enough sampler for this device and --count, from a short "
                   "calibration stored in the model's sampling.json; or force one")
    s.add_argument("--tol", type=float, default=1e-5,
                   help="relative-change tolerance of a forced jacobi / gs-jacobi sampler (default 1e-5)")
    s.add_argument("--modules", type=int, default=None,
                   help="modules per block of a forced gs-jacobi sampler (default about sqrt(tokens))")
    s.add_argument("--recalibrate", action="store_true", help="with --sampler auto: calibrate again")
    s.add_argument("-v", "--verbose", action="store_true", help="print the calibration measurements")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="test bits/dim of a trained model, as JSON")
    e.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    e.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    e.add_argument("--split", default="test", choices=("train", "test"))
    e.add_argument("--draws", type=int, default=1, help="uniform dequantization draws per image (default 1)")
    e.add_argument("--seed", type=int, default=0, help="dequantization noise seed")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--mixture", action=argparse.BooleanOptionalAction, default=True,
                   help="for class-conditional models also report p(x) = mean over labels of p(x|y) "
                   "(comparable with unconditional models) and the Bayes-classifier accuracy (default on)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("import-reference", help="convert an apple/ml-tarflow checkpoint into a saved model",
                       description="Convert a checkpoint of the reference TarFlow code (a torch-saved state_dict) "
                       "into a model directory (config.json + model.safetensors). Width, blocks, layers, classes and "
                       "affine/additive are read from the weights; the patch size and channels must be given.")
    i.add_argument("checkpoint", metavar="CKPT")
    i.add_argument("--patch-size", type=int, required=True, help="the reference's --patch_size")
    i.add_argument("--channels", type=int, required=True, help="image channels (the reference's --channel_size: 3 RGB)")
    i.add_argument("--num-classes", type=int, default=None, help="check the class count (default: from the weights)")
    i.add_argument("--head-dim", type=int, default=64, help="attention head dimension (64 in the reference code)")
    i.add_argument("--noise-std", type=float, default=None,
                   help="the Gaussian noise std it was trained with (the reference's --noise_std, e.g. 0.05), "
                   "recorded so that `tarflow sample` denoises by default")
    i.add_argument("--levels", type=int, default=256, help="pixel levels of the data (default 256)")
    i.add_argument("--out", required=True, help="model directory to write")
    i.set_defaults(func=cmd_import_reference)

    r = sub.add_parser("presets", help="list the named presets")
    r.add_argument("-v", "--verbose", action="store_true", help="print every preset's fields")
    r.set_defaults(func=cmd_presets)
    return p


def run_reporting_errors(func, *args) -> int:
    """Call ``func``; a TarflowError becomes one line on stderr and exit status 2, never a traceback."""
    try:
        return func(*args)
    except TarflowError as e:
        print(f"tarflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tarflow: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = [a.replace("_", "-") if a.startswith("--") and "=" not in a else a for a in
            (sys.argv[1:] if argv is None else argv)]  # --batch_size and --batch-size alike
    args, unknown = parser.parse_known_args(argv)

    def run() -> int:
        if unknown:
            flag = unknown[0]
            if args.command == "train" and flag.startswith("--"):
                known = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
                raise unknown_field_error(flag[2:].split("=")[0].replace("-", "_"), known, "config")
            parser.parse_args(argv)  # argparse's own message and exit 2
        return args.func(args)

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
