"""Video models (STARFlow-V) in `tarflow eval` (bits/dim, and per frame given the earlier frames) and
`tarflow sample` (clips as a GIF and a frame strip; continued from the first frames of a clip file)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import ConfigError, InputError


def cmd_eval_video(args: argparse.Namespace, model, model_dir: Path, name: str, data_dir: str | None) -> int:
    """Test bits/dim of the clips (as `evaluate_bpd`) and of each frame given the earlier ones."""
    from ..metrics import evaluate_bpd
    from ..metrics.video import frame_bpd_figures
    from ..train.video import load_clips
    from .evaluate import wants_mixture

    if args.noise_level is not None or args.extrapolate:
        raise ConfigError("--noise-level and --extrapolate apply to image models; a video model's bits/dim are of "
                          "its uniformly dequantized clips")
    options = model.metadata.get("dataset_options", {}) if name == model.metadata.get("dataset") else {}
    data = load_clips(name, args.split, data_dir, model.config, not args.no_progress, options)
    if args.prior is not None:
        model.set_likelihood_prior(args.prior)
    if model.config.latent:
        return eval_latent_clips(args, model, model_dir, name, data)
    config = model.config
    labels = data.labels if config.num_classes else None
    result = evaluate_bpd(model, data.clips, labels, data.levels, draws=args.draws, seed=args.seed,
                          mixture=wants_mixture(config, args), progress=not args.no_progress)
    result.update(frame_bpd_figures(model, data.clips, labels, data.levels, seed=args.seed,
                                    progress=not args.no_progress))
    result.update(clips=len(data), dataset=name, split=args.split, conditional=bool(config.num_classes),
                  model=str(model_dir), likelihood_prior=config.likelihood_prior)
    result.pop("images", None)
    print(json.dumps(result, indent=2))
    return 0


def eval_latent_clips(args: argparse.Namespace, model, model_dir: Path, name: str, data) -> int:
    """Test latent nats/dim of a video model on autoencoder latents (frames encoded one by one), and per frame
    given the earlier ones: the figure its trainer writes to eval.json, with the same noise."""
    from ..metrics.video import frame_latent_figures
    from ..train.latents import encode_split, evaluate_latent_nll
    from .latents import LATENT_UNIT, training_noise_std

    if args.draws != 1:
        raise ConfigError("--draws does not apply to frames through an autoencoder: the figure is -log p of the "
                          "test latents with one draw of the training noise, as in the run's eval.json")
    noise_std = training_noise_std(model, model_dir)
    config = model.config
    latents = encode_split(model.modality.frames, data, progress=not args.no_progress)
    labels = latents.labels if config.num_classes else None
    result = evaluate_latent_nll(model, latents, labels, noise_std, seed=args.seed,
                                 progress=not args.no_progress)
    result.update(frame_latent_figures(model, latents, labels, noise_std, seed=args.seed,
                                       progress=not args.no_progress))
    result.update(unit=LATENT_UNIT, noise_std=noise_std, latent_dims=config.num_dims, clips=len(latents),
                  dataset=name, split=args.split, conditional=bool(config.num_classes), model=str(model_dir),
                  likelihood_prior=config.likelihood_prior)
    result.pop("images", None)
    print(json.dumps(result, indent=2))
    return 0


def read_first_frames(path: str, model, levels: int):
    """The frames of a clip file (GIF, MP4, ...) as images (1, k, C, H, W) in [-1, 1], each pixel at its bin's
    centre; an `InputError` when they do not fit the model's frames (size, channels, count; the frames its
    autoencoder encodes when frames are latents)."""
    import torch

    from ..data.quantize import place_in_bins
    from ..video_io import read_clip

    modality = model.modality
    model_channels, size, _ = modality.image_shape()
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--first-frames {path}: no such file; give a clip (GIF, MP4, ...) of {size}x{size} frames")
    clip = read_clip(file, channels=3)
    grey = bool((clip == clip[:, :1]).all())
    wanted = "grey" if model_channels == 1 else "colour"
    if grey != (model_channels == 1):
        raise InputError(f"--first-frames {path}: its frames are {'grey' if grey else 'colour'} but the model makes "
                         f"{model_channels}-channel clips ({wanted}): give a {wanted} clip")
    clip = clip[:, :model_channels]
    frames, channels, height, width = clip.shape
    if (height, width) != (size, size):
        raise InputError(f"--first-frames {path}: its frames are {width}x{height} pixels but the model's are "
                         f"{size}x{size}: resize the clip")
    if frames >= modality.frame_count:
        raise InputError(f"--first-frames {path}: it has {frames} frames but the model makes clips of "
                         f"{modality.frame_count}: give at most {modality.frame_count - 1} to continue from")
    levels_of = (clip.long() * (levels - 1) + 127) // 255 if levels != 256 else clip.long()
    return place_in_bins(levels_of, torch.full(clip.shape, 0.5), levels)[None]


def extend(sampler, clip, frames: int, y, temperature: float, guidance, generator, context: int,
           noise_std: float | None = None, denoiser=None):
    """``clip`` (n, k, C, H, W) continued to ``frames`` frames: windows of the model's F frames, each continuing the
    last ``context`` frames of the clip so far (the first window: all k given ones); ``noise_std`` and ``denoiser``
    as for `continue_clips` (a model trained with gaussian noise)."""
    import torch

    from ..sampling import continue_clips

    window = sampler.model.modality.frame_count
    while clip.shape[1] < frames:
        given = clip if clip.shape[1] < window else clip[:, -context:]
        continued = continue_clips(sampler, given, y, temperature, guidance, generator, noise_std, denoiser)
        clip = torch.cat([clip, continued[:, given.shape[1]:]], dim=1)
    return clip[:, :frames]


def sample_video(args: argparse.Namespace, model, sampler, y, settings: dict, guidance, sigma, levels: int,
                 out: Path) -> tuple[float, str]:
    """Clips to ``out`` (a frame strip PNG, the first clip as a GIF beside it): drawn whole, or with
    ``--first-frames`` continued from the clip's frames; ``--frames`` beyond the model's F continue in windows.
    Latent frames are decoded by the autoencoder (given first frames are encoded, continued, and shown as given).
    Returns (seconds, a phrase saying what was drawn)."""
    import torch

    from ..sampling import frame_temperatures
    from ..sampling.flow_score import with_denoiser
    from ..train.video import save_clips
    from ..viz import to_uint8

    window = model.modality.frame_count
    frames = args.frames or window
    context = max(1, window // 2)
    generator = torch.Generator().manual_seed(args.seed)
    formats = clip_formats(args.clip_format) if args.clips_dir else []
    if formats and Path(args.clips_dir).exists() and not Path(args.clips_dir).is_dir():
        raise ConfigError(f"--clips-dir {args.clips_dir} is a file: give a folder for the clips")
    if model.config.noise_conditioning and (args.first_frames is not None or frames > window):
        raise ConfigError("--first-frames and --frames beyond the model's length continue clips exactly, which a "
                          "noise-conditioned model (generated at a noise level, then denoised) does not support")
    started = time.perf_counter()
    denoiser = None if args.score_denoiser is None else load_score_denoiser(args.score_denoiser, model, sigma)
    if args.first_frames is not None:
        given = read_first_frames(args.first_frames, model, levels).expand(args.count, -1, -1, -1, -1)
        given = given.to(model.device, model.dtype)
        x = extend(sampler, model.modality.from_frames(given), frames, y, settings["temperature"], guidance,
                   generator, context, sigma, denoiser)
        x = model.modality.to_frames(x)
        x[:, :given.shape[1]] = given  # the given frames, not their reconstruction (latent) or denoising
        what = f"continued from {given.shape[1]} frames of {args.first_frames}"
    else:
        temperature = frame_temperatures(model, settings["temperature"], settings["first_frame_temperature"])
        x = with_denoiser(sampler, denoiser).sample(args.count, y, temperature, guidance, sigma, generator=generator)
        if frames > window:
            x = extend(sampler, x, frames, y, settings["temperature"], guidance, generator, context, sigma, denoiser)
        x = model.modality.to_frames(x)
        what = "drawn whole" + (", denoised by the score denoiser" if denoiser else "")
    x = x[:, :frames]
    seconds = time.perf_counter() - started
    clips = to_uint8(x, levels)
    save_clips(clips, out)
    windows = f", windows of {window} frames continuing the last {context}" if frames > window else ""
    written = ""
    if formats:
        save_each_clip(clips, Path(args.clips_dir), formats)
        written = f" (each clip also as {' and '.join(name.upper() for name in formats)} in {args.clips_dir})"
    return seconds, f"{frames}-frame clips {what}{windows}{written}"


def clip_formats(text: str) -> list[str]:
    """The formats of --clip-format ("gif", "mp4" or both), checking up front that MP4 can be written."""
    from ..video_io import imageio_v3

    formats = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not formats or any(name not in ("gif", "mp4") for name in formats):
        raise ConfigError(f"--clip-format takes gif, mp4 or gif,mp4, got {text!r}")
    if "mp4" in formats:
        imageio_v3("--clip-format mp4 (or pass --clip-format gif)")
    return list(dict.fromkeys(formats))


def save_each_clip(clips, folder: Path, formats: list[str]) -> None:
    """uint8 clips (N, F, C, H, W) as folder/clip_000.gif (and .mp4), ..."""
    from ..video_io import save_gif, save_mp4

    folder.mkdir(parents=True, exist_ok=True)
    savers = {"gif": save_gif, "mp4": save_mp4}
    for index, clip in enumerate(clips):
        for name in formats:
            savers[name](clip, folder / f"clip_{index:03d}.{name}")


def load_score_denoiser(path: str, model, sigma: float | None):
    """The `CausalScoreDenoiser` in ``path``, on the model's device; a `ConfigError` unless it was fitted for this
    model's clips at its noise ``sigma`` (None: the model's samples are not denoised)."""
    from ..sampling.flow_score import CausalScoreDenoiser

    if sigma is None:
        raise ConfigError("--score-denoiser removes the training noise of a model trained with gaussian noise: "
                          "this one was not (or --denoise none was given)")
    denoiser = CausalScoreDenoiser.from_pretrained(path).to(model.device, model.dtype)
    window = model.modality.frame_count
    if denoiser.config.frame_count != window or abs(denoiser.config.sigma - sigma) > 1e-12:
        raise ConfigError(f"--score-denoiser {path} was fitted for {denoiser.config.frame_count} frames at sigma "
                          f"{denoiser.config.sigma:g}, not this model's {window} at {sigma:g}")
    return denoiser


def add_video_sample_options(parser: argparse.ArgumentParser) -> None:
    from .options import number

    parser.add_argument("--first-frames", default=None, metavar="CLIP",
                        help="video models: continue the frames of this clip file (GIF, MP4, ...; fewer frames than "
                        "the model's clips, at its frame size): they are encoded exactly and the rest sampled "
                        "given them (a model trained with gaussian noise: given its noise first, and denoised after)")
    parser.add_argument("--score-denoiser", default=None, metavar="DIR",
                        help="video models trained with gaussian noise: denoise with this fitted causal score "
                        "denoiser (`tarflow fit-score-denoiser`) instead of the Tweedie step")
    parser.add_argument("--frames", type=number(int, minimum=1), default=None,
                        help="video models: frames per clip (default: the model's); more continue in windows of "
                        "the model's length, each from the last half of the frames so far")
    parser.add_argument("--clips-dir", default=None, metavar="DIR",
                        help="video models: also write every clip as DIR/clip_000.gif, ... in each --clip-format")
    parser.add_argument("--clip-format", default="gif,mp4", metavar="FORMATS",
                        help="--clips-dir: gif, mp4 or gif,mp4 (default; MP4 needs pip install 'tarflow[video]')")


def cmd_temporal_consistency(args: argparse.Namespace) -> int:
    """The fraction of generated clips whose digits stay the same first to last frame, beside real test clips'."""
    import torch

    from ..data import load_dataset
    from ..data.moving_mnist import digit_sets
    from ..metrics.temporal import (consistent_fraction, digit_classifier, frame_accuracy, matching_fraction,
                                    unrelated_fraction)
    from ..runs import load_model
    from ..sampling import frame_temperatures
    from ..sampling.flow_score import denoising_errors, with_denoiser
    from ..train.video import load_clips
    from ..viz import to_uint8
    from .sample import choose_denoiser, choose_sampler, stored_settings

    model, model_dir = load_model(args.path, args.device)
    metadata = model.metadata
    if model.config.modality != "video" or metadata.get("dataset") != "moving-mnist":
        raise ConfigError("temporal-consistency needs a video model trained on moving-mnist (its digit labels "
                          "train the per-frame classifier)")
    options = metadata.get("dataset_options", {})
    data_dir = args.data_dir or metadata.get("data_dir")
    test = load_clips("moving-mnist", "test", data_dir, model.config, not args.no_progress, options)
    digits = test.object_labels.shape[1]
    mnist = load_dataset("mnist", "train", data_dir=data_dir, progress=not args.no_progress)  # the classifier's digits
    classifier, classifier_info = digit_classifier(mnist.images[:, 0], mnist.labels, test.clips.shape[-1], digits,
                                                   test.levels, args.classifier_steps, args.seed,
                                                   progress=not args.no_progress)
    classifier = classifier.to(model.device)
    _, settings = stored_settings(model, args)
    guidance = conditional_guidance(model, settings)
    sampler, how = choose_sampler(model, model_dir, args.sampler, args.count, guidance)
    iterative, sigma, denoised = choose_denoiser(model, args)
    if iterative is not None:
        raise ConfigError("temporal-consistency samples whole clips exactly; --denoise iterative (noise-conditioned "
                          "models) does not apply to video")
    denoiser = load_score_denoiser(args.score_denoiser, model, sigma) if args.score_denoiser else None
    if denoiser is not None:
        denoised = f"score denoiser {args.score_denoiser}"
    temperature, first_frame = settings["temperature"], settings["first_frame_temperature"]
    classes = model.config.num_classes
    y = torch.arange(args.count) % classes if classes else None  # conditional: the digit pairs in turn
    per_token = frame_temperatures(model, temperature, first_frame)
    samples = with_denoiser(sampler, denoiser).sample(args.count, y, per_token, guidance, sigma,
                                                      generator=torch.Generator().manual_seed(args.seed))
    clips = to_uint8(model.modality.to_frames(samples), test.levels).cpu()
    matching = {}
    if classes:
        wanted = torch.tensor(digit_sets(digits))[y]
        matching = {"matching_first_frame": matching_fraction(classifier, clips[:, 0], wanted),
                    "matching_last_frame": matching_fraction(classifier, clips[:, -1], wanted),
                    "matching": "fraction of sampled clips whose frame shows the digits drawn for (classes in turn)"}
    result = {"consistent_samples": consistent_fraction(classifier, clips, digits), **matching, "samples": args.count,
              "consistent_real_test": consistent_fraction(classifier, test.clips, digits),
              "consistent_unrelated_real": unrelated_fraction(classifier, test.clips, digits),
              "classifier_frame_accuracy": frame_accuracy(classifier, test.clips, test.object_labels),
              "test_clips": len(test), "digits_per_clip": digits, "classifier_steps": args.classifier_steps,
              "classifier_train_s": classifier_info["train_seconds"],
              "classifier_cached": classifier_info["cached"], "temperature": temperature,
              "first_frame_temperature": first_frame or temperature,
              "guidance": f"w={guidance.weight:g} ({guidance.rule})" if guidance else "none", "sampler": how,
              "denoising": denoised, "model": str(model_dir)}
    if sigma:  # trained with gaussian noise: how near each denoiser takes noisy test clips to the clean ones
        count = min(args.count, len(test))
        labels = test.labels[:count] if classes else None
        result["denoising_error"] = {
            **denoising_errors(model, test.clips[:count], test.levels, sigma, labels, denoiser, seed=args.seed),
            "clips": count, "sigma": sigma,
            "unit": "mean squared error to the clean test clips per dimension, in the flow's units"}
    if args.continue_from:
        result["continuation"] = continuation_figures(args, model, sampler, classifier, data_dir, options,
                                                      temperature, guidance, test.levels, sigma, denoiser)
    print(json.dumps(result, indent=2))
    return 0


def conditional_guidance(model, settings: dict):
    """The `Guidance` of ``settings`` (weight, rule) for a class-conditional model; None without a weight. A weight
    given to an unconditional model is refused."""
    from ..sampling import Guidance
    from ..sampling.guidance import default_rule

    if not settings["guidance"]:
        return None
    if not model.config.num_classes:
        raise ConfigError("--guidance needs a class-conditional model (trained with --num-classes); this one is "
                          "unconditional: drop --guidance")
    return Guidance(settings["guidance"], settings["guidance_rule"] or default_rule(model.config))


def continuation_figures(args: argparse.Namespace, model, sampler, classifier, data_dir, options: dict,
                         temperature: float, guidance, levels: int, sigma: float | None, denoiser) -> dict:
    """Video-to-video on real test clips: their first k = --continue-from frames, continued to 2k by the model
    (windows of its length, each from the last half of the frames so far; with ``sigma``, a model trained with
    gaussian noise, noised and the windows denoised as `continue_clips` says); the per-pixel error of frames
    k+1..2k and whether the last one still shows the clip's digits, beside the real last frame."""
    import torch

    from ..data.quantize import place_in_bins
    from ..metrics.temporal import continuation_error, matching_fraction
    from ..train.video import load_clips
    from ..viz import to_uint8

    given = args.continue_from
    if model.config.noise_conditioning:
        raise ConfigError("--continue-from continues clips exactly, which a noise-conditioned model (generated at a "
                          "noise level, then denoised) does not support")
    real = load_clips("moving-mnist", "test", data_dir, model.config, not args.no_progress, options, 2 * given)
    clips, count = real.clips[:args.count], min(args.count, len(real))
    y = real.labels[:count] if model.config.num_classes else None
    first = place_in_bins(clips[:, :given].long(), torch.full(clips[:, :given].shape, 0.5), levels)
    first = model.modality.from_frames(first.to(model.device, model.dtype))
    window = model.modality.frame_count
    generator = torch.Generator().manual_seed(args.seed)
    continued = extend(sampler, first, 2 * given, y, temperature, guidance, generator, max(1, window // 2), sigma,
                       denoiser)
    continued = to_uint8(model.modality.to_frames(continued), levels).cpu()
    continued[:, :given] = clips[:, :given]  # the given frames, not their reconstruction (latent) or denoising
    digits = real.object_labels[:count]
    return {"given_frames": given, "continued_frames": given, "clips": count,
            **continuation_error(continued, clips, given, levels),
            "last_frame_shows_the_digits": matching_fraction(classifier, continued[:, -1], digits),
            "real_last_frame_shows_the_digits": matching_fraction(classifier, clips[:, -1], digits)}


def add_temporal_consistency_parser(sub) -> None:
    from .options import (DEVICE_HELP, add_denoise_options, add_first_frame_temperature_option, add_sampler_options,
                          add_stored_guidance_options, number)

    parser = sub.add_parser("temporal-consistency", help="video models on moving-mnist: the fraction of sampled clips "
                            "whose digits stay the same first to last frame, by a per-frame digit classifier, as JSON")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--count", type=number(int, minimum=1), default=64, help="clips to sample (default 64)")
    parser.add_argument("--classifier-steps", type=number(int, minimum=1), default=3000,
                        help="training steps of the digit classifier on frames drawn from the MNIST training digits "
                        "(default 3000); trained once per setting and cached beside the FID statistics")
    parser.add_argument("--data-dir", default=None, help="the MNIST files (default: the model's record)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="sampling and classifier seed")
    parser.add_argument("--temperature", type=number(float, above=0), default=None,
                        help="prior temperature (default: the one stored with the model, else 1)")
    add_first_frame_temperature_option(parser)
    add_stored_guidance_options(parser, "class-conditional models, samples and continuations: ")
    parser.add_argument("--continue-from", type=number(int, minimum=1), default=None, metavar="K",
                        help="also continue --count real test clips from their first K frames to 2K (video-to-video): "
                        "the per-pixel error of the continued frames and their digits' consistency")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_sampler_options(parser)
    add_denoise_options(parser, "models trained with gaussian noise: tweedie (default; also --denoise alone), one "
                        "Tweedie step with the flow's score; none")
    parser.add_argument("--score-denoiser", default=None, metavar="DIR",
                        help="models trained with gaussian noise: denoise the samples with this fitted causal score "
                        "denoiser (`tarflow fit-score-denoiser`) instead of the Tweedie step; the denoising errors "
                        "on noisy test clips then give both")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_temporal_consistency)


def cmd_fit_score_denoiser(args: argparse.Namespace) -> int:
    """Fit the causal score denoiser of a video model trained with gaussian noise; save it in --out."""
    from ..runs import load_model
    from ..sampling.flow_score import fit_score_denoiser
    from ..sampling.small_denoiser import loss_summary
    from ..train.video import load_clips

    model, model_dir = load_model(args.path, args.device)
    metadata = model.metadata
    if model.config.modality != "video":
        raise ConfigError("fit-score-denoiser needs a video model (modality=video)")
    if metadata.get("noise") != "gaussian":
        raise ConfigError("flow-score matching needs a model trained with gaussian noise (noise=gaussian): the "
                          "denoiser learns to remove it; this one was trained on uniformly dequantized clips")
    out = Path(args.out) if args.out else model_dir / "score_denoiser"
    data = load_clips(metadata["dataset"], "train", args.data_dir or metadata.get("data_dir"), model.config,
                      not args.no_progress, metadata.get("dataset_options", {}))
    started = time.perf_counter()
    denoiser, losses = fit_score_denoiser(model, data.clips, data.levels, float(metadata["noise_std"]), args.steps,
                                          args.batch_size, args.lr, args.width, args.layers, args.seed,
                                          progress=not args.no_progress,
                                          labels=data.labels if model.config.num_classes else None)
    denoiser.save_pretrained(out)
    print(json.dumps({"out": str(out), "steps": args.steps, "seconds": round(time.perf_counter() - started, 1),
                      **loss_summary(losses)}, indent=2))
    return 0


def add_fit_score_denoiser_parser(sub) -> None:
    from .options import DEVICE_HELP, number

    parser = sub.add_parser("fit-score-denoiser", help="video models trained with gaussian noise: fit a small "
                            "denoiser, causal over frames, to the flow's own score (flow-score matching); `tarflow "
                            "sample --score-denoiser DIR` then uses it in place of the Tweedie step")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--out", default=None, help="where to save it (default MODEL_DIR/score_denoiser)")
    parser.add_argument("--steps", type=number(int, minimum=1), default=500, help="training steps (default 500)")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=16, help="clips per step (default 16)")
    parser.add_argument("--lr", type=number(float, above=0), default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--width", type=number(int, minimum=2), default=64, help="Transformer width (default 64)")
    parser.add_argument("--layers", type=number(int, minimum=1), default=2, help="Transformer layers (default 2)")
    parser.add_argument("--data-dir", default=None, help="the dataset's files (default: the model's record)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="noise and batch seed (default 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_fit_score_denoiser)
