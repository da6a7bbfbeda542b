"""`tarflow sweep-sampling`: class consistency and FID over a small grid of guidance weight, rule and temperature,
printed as a table and saved as JSON and a picture, so a user can choose how to sample a model; `tarflow
sweep-denoising`: the same for the iterative denoising of a noise-conditioned model (iTARFlow), on one set of
samples drawn at its highest level."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from .options import add_latent_denoise_option, add_sampler_options, check_output_file, number, parse_weights_list
from .sample import sampler_per_guidance
from .trajectory import sweep_sampler_name


def cmd_sweep_sampling(args: argparse.Namespace) -> int:
    from ..metrics import FeatureExtractor
    from ..metrics.model_data import model_levels
    from ..metrics.sweep import plot_sweep, settings_grid, sweep_sampling
    from ..io import atomic_write_text
    from ..sampling.guidance import default_rule
    from .evaluate import load_model_for_metrics
    from .latents import sample_decoding

    out = Path(args.out) if args.out else Path(args.path) / "sweep"
    check_output_file(out / "sweep.json", "--out")
    weights, temperatures = parse_weights_list(args.guidance), parse_temperatures(args.temperature)
    rules = parse_rules(args.guidance_rule) if args.guidance_rule is not None else None
    model, model_dir, name, data_dir = load_model_for_metrics(args, trajectory=True)
    settings = settings_grid(weights, rules or [default_rule(model.config)], temperatures)
    decoding = sample_decoding(model, args.denoise)  # latent: decoded to images; pixel: --denoise none
    extractor = FeatureExtractor(args.weights, device=model.device) if args.weights else None
    batch = min(args.sample_batch, args.count)
    sampler_for = sampler_per_guidance(model, model_dir, args, batch, decoding)
    sampler_name = sweep_sampler_name(sampler_for(None)) if model.config.architecture == "ntm" else args.sampler

    decoded = None  # how the samples were decoded, with the decoder's weights: part of the cache key
    if decoding:
        decoded = {**decoding.fields(), "decoder_sha256": decoding.weights_sha256()}
    result = sweep_sampling(model, name, settings, args.count, extractor, args.split, args.ref_count, args.seed,
                            batch, args.classifier_steps, data_dir, sampler_for, sampler_name, out / "cache",
                            progress=not args.no_progress, decoding=decoded)
    rows = result["rows"]
    picture = plot_sweep(rows, model_levels(model), out / "sweep.png")
    table = [{key: value for key, value in row.items() if key != "strip"} for row in rows]
    saved = {"model": str(model_dir), **result, "rows": table, "picture": str(picture)}
    atomic_write_text(out / "sweep.json", json.dumps(saved, indent=2) + "\n")
    print(format_table(table))
    print(f"-> {out / 'sweep.json'}, {picture}")
    return 0


def cmd_sweep_denoising(args: argparse.Namespace) -> int:
    from ..io import atomic_write_text
    from ..metrics import FeatureExtractor
    from ..metrics.denoising_sweep import denoising_grid, sweep_denoising
    from ..metrics.model_data import model_levels
    from ..metrics.sweep import plot_sweep
    from ..sampling import Guidance
    from ..sampling.guidance import default_rule
    from .evaluate import load_model_for_metrics
    from .sample import choose_sampler

    out = Path(args.out) if args.out else Path(args.path) / "sweep-denoising"
    check_output_file(out / "denoising.json", "--out")
    steps, dynamics = parse_steps(args.steps), parse_dynamics(args.dynamics)
    model, model_dir, name, data_dir = load_model_for_metrics(args)
    settings = denoising_grid(steps, dynamics, args.clip)
    guidance = Guidance(args.guidance, args.guidance_rule or default_rule(model.config)) if args.guidance else None
    extractor = FeatureExtractor(args.weights, device=model.device) if args.weights else None
    batch = min(args.sample_batch, args.count)
    sampler, how = choose_sampler(model, model_dir, args.sampler, batch, guidance, args.calibration)
    result = sweep_denoising(model, name, settings, args.count, extractor, args.split, args.ref_count, guidance,
                             args.temperature, args.seed, batch, args.classifier_steps, data_dir, sampler,
                             args.sampler, out / "cache", progress=not args.no_progress)
    rows = result["rows"]
    picture = plot_sweep(rows, model_levels(model), out / "denoising.png")
    table = [{key: value for key, value in row.items() if key != "strip"} for row in rows]
    saved = {"model": str(model_dir), **result, "sampler": how, "rows": table, "picture": str(picture)}
    atomic_write_text(out / "denoising.json", json.dumps(saved, indent=2) + "\n")
    print(format_table(table))
    print(f"-> {out / 'denoising.json'}, {picture}")
    return 0


def parse_steps(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise ConfigError(f"--steps must be comma-separated integers such as 0,1,5,10,20, got {text!r}") from None
    if not values or min(values) < 0:
        raise ConfigError(f"--steps takes integers >= 0 (0: no denoising, 1: one Tweedie step), got {text!r}")
    return values


def parse_dynamics(text: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values or set(values) - {"ode", "sde"}:
        raise ConfigError(f"--dynamics takes ode, sde or ode,sde, got {text!r}")
    return values


def format_table(rows: list[dict]) -> str:
    """The rows as aligned text: setting, then consistency, FID and seconds per image where measured."""
    optional = (("consistency", "consistency", "{:.3f}"), ("fid", "FID", "{:.2f}"),
                ("seconds_per_image", "s/image (total)", "{[total]:.4f}"))
    columns = [("setting", "setting", "{}")] + [column for column in optional if any(column[0] in row for row in rows)]
    cells = [[title for _, title, _ in columns]] + [[form.format(row[key]) for key, _, form in columns]
                                                    for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells)


def parse_rules(text: str) -> list[str]:
    rules = [rule.strip() for rule in text.split(",") if rule.strip()]
    unknown = sorted(set(rules) - {"tarflow", "starflow"})
    if not rules or unknown:
        raise ConfigError(f"--guidance-rule takes tarflow, starflow or both (tarflow,starflow), got {text!r}")
    return rules


def parse_temperatures(text: str) -> list[float]:
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise ConfigError(f"--temperature must be comma-separated numbers such as 0.8,1, got {text!r}") from None
    if not values or not all(0 < value < float("inf") for value in values):
        raise ConfigError(f"--temperature needs positive finite values such as 0.8,1, got {text!r}")
    return values


def add_measure_options(parser: argparse.ArgumentParser) -> None:
    """What the sweeps measure each setting with: the FID extractor and reference, the class-consistency classifier."""
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="TorchScript Inception feature extractor (as for tarflow fid): also FID per setting")
    parser.add_argument("--split", default="test", choices=("train", "test"),
                        help="FID reference split (default test)")
    parser.add_argument("--ref-count", type=number(int, minimum=2), default=None,
                        help="FID reference images, drawn at random (default: the whole split)")
    parser.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    parser.add_argument("--data-dir", default=None, help="local copy of the dataset's files (no download)")
    parser.add_argument("--classifier-steps", type=number(int, minimum=1), default=1000,
                        help="training steps of the class-consistency classifier (default 1000)")


def add_sweep_parser(sub) -> None:
    parser = sub.add_parser("sweep-sampling", help="class consistency and FID over guidance weights, rules and "
                            "temperatures", description="Sample --count images for every setting of the grid (the "
                            "same noise for each) and report the class consistency of class-conditional models "
                            "(the dataset's small classifier, trained once and cached) and, with --weights, the FID "
                            "against a dataset split. Writes OUT/sweep.json, OUT/sweep.png (a row of samples per "
                            "setting) and OUT/cache/, from which a rerun takes the settings it has measured.")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--guidance", default="0,1,2,4", metavar="W1,W2,...",
                        help="guidance weights (default 0,1,2,4)")
    parser.add_argument("--guidance-rule", default=None, metavar="RULES",
                        help="tarflow, starflow, or tarflow,starflow (default: starflow for latent models, tarflow "
                        "otherwise)")
    parser.add_argument("--temperature", default="1", metavar="T1,T2,...", help="prior temperatures (default 1)")
    parser.add_argument("--count", type=number(int, minimum=2), default=1000,
                        help="samples per setting (default 1000)")
    add_measure_options(parser)
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="noise seed, the same for every setting")
    add_sampler_options(parser)
    parser.add_argument("--sample-batch", type=number(int, minimum=1), default=256,
                        help="samples per sampler call (default 256)")
    add_latent_denoise_option(parser)
    parser.add_argument("--out", default=None, help="output directory (default RUN_OR_MODEL_DIR/sweep)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_sweep_sampling)


def add_sweep_denoising_parser(sub) -> None:
    from .options import DEVICE_HELP, RULE_HELP, TEMPERATURE_HELP

    parser = sub.add_parser("sweep-denoising", help="noise-conditioned models (iTARFlow): FID, class consistency and "
                            "time per image of each iterative denoising setting on the same samples",
                            description="Draw --count samples once at the model's highest trained noise level t1, "
                            "denoise them with every setting (--steps x --dynamics; 0 steps: none, 1: one Tweedie step) "
                            "and report the class consistency of class-conditional models and, with --weights, the "
                            "FID against a dataset split, with the seconds per image (generation + denoising). Writes "
                            "OUT/denoising.json, OUT/denoising.png (a row of the same samples per setting) and "
                            "OUT/cache/, from which a rerun takes the samples and the settings it has measured.")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--steps", default="1,5,10,20", metavar="N1,N2,...",
                        help="denoising steps per setting (default 1,5,10,20; 0: the samples at t1 as they are)")
    parser.add_argument("--dynamics", default="ode,sde", metavar="ode,sde",
                        help="ode, sde or both (default ode,sde), for settings of 2 or more steps")
    parser.add_argument("--clip", action="store_true", help="clamp each step's clean estimate to [-1, 1]")
    parser.add_argument("--count", type=number(int, minimum=2), default=1000,
                        help="samples, shared by every setting (default 1000)")
    add_measure_options(parser)
    parser.add_argument("--guidance", type=number(float, minimum=0), default=0.0,
                        help="guidance weight of the generation at t1 (default 0)")
    parser.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default=None, help=RULE_HELP)
    parser.add_argument("--temperature", type=number(float, above=0), default=1.0, help=TEMPERATURE_HELP)
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="noise seed of the samples")
    add_sampler_options(parser)
    parser.add_argument("--sample-batch", type=number(int, minimum=1), default=256,
                        help="samples per sampler call and per denoising batch (default 256)")
    parser.add_argument("--out", default=None, help="output directory (default RUN_OR_MODEL_DIR/sweep-denoising)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_sweep_denoising)
