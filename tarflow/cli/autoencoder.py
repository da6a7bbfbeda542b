"""`tarflow autoencoder train | eval`: the frozen autoencoder of latent (STARFlow) models."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..configs import field_types
from .options import DEVICE_HELP, check_output_file, number, parse_bool, parse_ints

DATASET_CHANNELS = {"digits": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "folder": 3}


def section_flags(parser: argparse.ArgumentParser, cls: type, section: str, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass ``cls`` (--kl-weight), parsed strictly, default: the field's own."""
    group = parser.add_argument_group(f"{section} (defaults in brackets)")
    types, defaults = field_types(cls), cls()
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind, choices = types[field.name], field.metadata.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else getattr(kind, "__name__", "").upper()
        if kind is bool:
            kind, metavar = parse_bool, "{true,false}"
        elif kind == list[int]:
            kind, metavar = parse_ints, "INT[,INT...]"
        elif kind in (int, float):
            kind = number(kind)
        group.add_argument(f"--{field.name.replace('_', '-')}", dest=f"{section}.{field.name}", type=kind,
                           default=None, metavar=metavar, choices=choices,
                           help=f"{field.metadata['help']} [{getattr(defaults, field.name)!r}]")


def section_values(args: argparse.Namespace, section: str) -> dict:
    values = {key.split(".")[1]: value for key, value in vars(args).items()
              if key.startswith(section + ".") and value is not None}
    if isinstance(values.get("widths"), int):
        values["widths"] = [values["widths"]]
    return values


def cmd_autoencoder_train(args: argparse.Namespace) -> int:
    from ..autoencoders import AutoencoderConfig, AutoencoderTrainConfig
    from ..autoencoders.train import train_autoencoder

    train_config = AutoencoderTrainConfig(**section_values(args, "train"))
    model_values = {"channels": DATASET_CHANNELS.get(train_config.dataset, 3), **section_values(args, "model")}
    model_config = AutoencoderConfig(**model_values)
    run_dir = Path(args.out or f"runs/autoencoder-{train_config.dataset}")
    result = train_autoencoder(model_config, train_config, run_dir, progress=not args.no_progress)
    print(f"test PSNR: {result['psnr_db']:.2f} ± {result['stderr']:.2f} dB ({result['images']} "
          f"{train_config.dataset} test images, decode(encode(x)) quantized)")
    print(f"run directory: {run_dir}  (model/, reconstructions.png, metrics.jsonl, eval.json); "
          f"use it with `tarflow train --modality latents --autoencoder {run_dir}`")
    return 0


def cmd_autoencoder_eval(args: argparse.Namespace) -> int:
    from ..autoencoders import load_autoencoder
    from ..autoencoders.train import evaluate_psnr, reconstruction_fid
    from ..data import load_dataset
    from ..errors import ConfigError
    from ..io import atomic_write_text
    from ..train.device import pick_device

    out = check_output_file(args.out, "--out") if args.out else None
    autoencoder = load_autoencoder(args.path, pick_device(args.device))
    metadata = getattr(autoencoder, "metadata", {})
    dataset = args.dataset or metadata.get("dataset")
    if not dataset:
        raise ConfigError(f"{args.path} does not say which dataset it was trained on: give --dataset")
    image_size = int(metadata.get("image_size", 0)) if dataset == "folder" else None
    data = load_dataset(dataset, args.split, data_dir=args.data_dir, image_size=image_size,
                        channels=autoencoder.channels, progress=not args.no_progress)
    images = data.images
    if args.count is not None:
        from ..metrics.fid import random_subset

        images = images[random_subset(len(images), args.count)] if args.count < len(images) else images
    result = evaluate_psnr(autoencoder, images, data.levels, progress=not args.no_progress)
    result.update(dataset=dataset, split=args.split)
    print(f"PSNR: {result['psnr_db']:.2f} ± {result['stderr']:.2f} dB ({result['images']} {dataset} {args.split} "
          f"images)")
    if args.weights:
        from ..metrics import FeatureExtractor
        from ..metrics.fid import split_statistics

        extractor = FeatureExtractor(args.weights, device=pick_device(args.device))
        # the images' statistics are the dataset's cached ones (the same subset), shared with `tarflow fid`
        real, _ = split_statistics(extractor, images, data.levels, dataset, args.split,
                                   progress=not args.no_progress)
        result["reconstruction_fid"] = reconstruction_fid(autoencoder, extractor, images, data.levels,
                                                          progress=not args.no_progress, real=real)
        print(f"FID of the reconstructions against the images: {result['reconstruction_fid']:.2f}")
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return 0


def cmd_finetune_decoder(args: argparse.Namespace) -> int:
    from ..autoencoders.finetune import DENOISING_DECODER, finetune_decoder
    from ..runs import load_model

    flow, model_dir = load_model(args.path, "cpu")
    result = finetune_decoder(flow, model_dir, args.steps, args.batch_size, args.lr, args.seed, args.data_dir,
                              args.device, progress=not args.no_progress)
    print(f"test PSNR of decode(latent + sigma eps), sigma={result['noise_std']:.4g}: "
          f"{result['noisy_psnr_db_before']:.2f} dB before, {result['noisy_psnr_db_after']:.2f} dB after "
          f"{result['steps']} steps ({result['images']} test images) -> {model_dir / DENOISING_DECODER}; "
          f"`tarflow sample` now denoises with it instead of a Tweedie step")
    return 0


def add_autoencoder_parser(sub) -> None:
    from ..autoencoders import AutoencoderConfig, AutoencoderTrainConfig

    parser = sub.add_parser("autoencoder", help="train or evaluate the frozen autoencoder of latent (STARFlow) "
                            "models", description="The autoencoder whose latents a `--modality latents` flow models.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    train = verbs.add_parser("train", help="train a small KL autoencoder (SD-VAE shape) on a dataset",
                             description="Train a convolutional KL autoencoder: squared error plus a small KL "
                             "term, no perceptual or adversarial loss. A run directory that holds a checkpoint of "
                             "the same config is resumed.")
    train.add_argument("--out", default=None, help="run directory (default runs/autoencoder-DATASET)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--channels", dest="model.channels", type=number(int, minimum=1), default=None,
                       help="image channels (default: the dataset's: 1 for digits and MNIST, 3 for CIFAR-10)")
    section_flags(train, AutoencoderConfig, "model", skip=("channels",))
    section_flags(train, AutoencoderTrainConfig, "train")
    train.set_defaults(func=cmd_autoencoder_train)

    evaluate = verbs.add_parser("eval", help="reconstruction PSNR of an autoencoder on a dataset split",
                                description="PSNR = 10 log10((L-1)^2 / MSE) of quantized decode(encode(x)), per "
                                "image, averaged over the split.")
    evaluate.add_argument("path", metavar="RUN_OR_AUTOENCODER_DIR",
                          help="an autoencoder run directory, its model/, or a diffusers AutoencoderKL folder")
    evaluate.add_argument("--dataset", default=None, help="dataset (default: the one it was trained on)")
    evaluate.add_argument("--split", choices=("train", "test"), default="test", help="split (default test)")
    evaluate.add_argument("--data-dir", default=None, help="local copy of the dataset's files")
    evaluate.add_argument("--count", type=number(int, minimum=2), default=None,
                          help="evaluate this many images of the split, drawn at random (default: all)")
    evaluate.add_argument("--weights", default=None, metavar="FILE",
                          help="also the FID of the reconstructions against the images, with this TorchScript "
                          "Inception feature extractor (as `tarflow fid --weights`)")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.add_argument("--out", default=None, metavar="FILE", help="also write the result as JSON to FILE")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd_autoencoder_eval)

    finetune = verbs.add_parser("finetune-decoder", help="fine-tune a latent flow's decoder on noisy latents "
                                "(learned denoising)",
                                description="Fine-tune the decoder of a latent flow's autoencoder on z + sigma eps, "
                                "sigma the flow's training noise, so that it decodes noisy samples to clean images; "
                                "saved as denoising_decoder/ in the flow's model directory, where `tarflow sample` "
                                "finds it.")
    finetune.add_argument("path", metavar="RUN_OR_MODEL_DIR", help="a latent flow's run or model directory")
    finetune.add_argument("--steps", type=number(int, minimum=1), default=1000, help="optimizer steps (default 1000)")
    finetune.add_argument("--batch-size", type=number(int, minimum=1), default=64, help="images per step (default 64)")
    finetune.add_argument("--lr", type=number(float, above=0), default=1e-4,
                          help="learning rate (AdamW, cosine decay; default 1e-4)")
    finetune.add_argument("--seed", type=number(int, minimum=0), default=0, help="seed of the data order and noise")
    finetune.add_argument("--data-dir", default=None, help="local copy of the dataset's files")
    finetune.add_argument("--device", default="auto", help=DEVICE_HELP)
    finetune.add_argument("--no-progress", action="store_true", help="no progress bars")
    finetune.set_defaults(func=cmd_finetune_decoder)
