"""`tarflow sweep-sampling`: class consistency and FID over a small grid of guidance weight, rule and temperature,
printed as a table and saved as JSON and a picture, so a user can choose how to sample a model."""

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


def format_table(rows: list[dict]) -> str:
    """The rows as aligned text: setting, then consistency and FID where measured."""
    columns = [("setting", "setting", "{}")] + [(key, title, form) for key, title, form in
                                                (("consistency", "consistency", "{:.3f}"), ("fid", "FID", "{:.2f}"))
                                                if any(key in row for row in rows)]
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
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="noise seed, the same for every setting")
    add_sampler_options(parser)
    parser.add_argument("--sample-batch", type=number(int, minimum=1), default=256,
                        help="samples per sampler call (default 256)")
    add_latent_denoise_option(parser)
    parser.add_argument("--out", default=None, help="output directory (default RUN_OR_MODEL_DIR/sweep)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_sweep_sampling)
