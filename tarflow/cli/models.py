"""`tarflow import-reference | calibrate | presets`: commands that make, measure or list models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .options import DEVICE_HELP, GUIDANCE_HELP, check_output_file, number


def cmd_import_reference(args: argparse.Namespace) -> int:
    from ..flows.reference import convert_reference_state, load_reference_state
    from ..flows.saving import OWNED_FILES, is_model_dir
    from ..io import check_output_dir

    check_output_dir(args.out, OWNED_FILES, is_model_dir)  # before any work: nothing is written if refused
    metadata = {"imported_from": "apple/ml-tarflow", "source": str(Path(args.checkpoint).resolve()),
                "levels": args.levels}
    if args.noise_std:
        metadata.update(noise="gaussian", noise_std=args.noise_std)
    state = load_reference_state(args.checkpoint)
    model = convert_reference_state(state, args.patch_size, args.channels, args.head_dim, args.num_classes, metadata,
                                    args.image_size, args.prior)
    model.save_pretrained(args.out, metadata=metadata)
    config = model.config
    print(f"imported {args.checkpoint}: {config.image_size}x{config.image_size}x{config.channels}, patch "
          f"{config.patch_size}, width {config.width}, {config.num_blocks} blocks x {config.layers_per_block} layers, "
          f"head dim {config.head_dim}, {config.transform}, {config.num_classes or 'no'} classes, log p(x) with the "
          f"{config.likelihood_prior} prior -> {args.out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure the fastest exact-enough sampler for this device and batch size, and store it (see
    tarflow.sampling.calibrate); `tarflow sample | fid | guidance-accuracy --sampler auto` read it."""
    from ..runs import load_model
    from ..sampling import Guidance
    from ..sampling.calibrate import calibrate_and_save, read_calibration

    if args.out is not None:
        check_output_file(args.out, "--out")
    model, model_dir = load_model(args.path, args.device)
    location = Path(args.out) if args.out is not None else model_dir
    try:
        read_calibration(location)  # refuse a file that is not a calibration before measuring
    except CheckpointError as e:
        if args.out is None:
            raise
        raise ConfigError(f"--out {args.out} exists and is not a tarflow sampling calibration: give a new file or "
                          f"one `tarflow calibrate` wrote (it was not changed)") from e
    guidance = None
    if args.guidance or args.attn_temp != 1.0:
        guidance = Guidance(args.guidance, attn_temp=args.attn_temp)
    log = (lambda message: print(f"  calibration: {message}")) if args.verbose else None
    entry, file = calibrate_and_save(model, location, args.count, guidance, log=log)
    print(f"calibrated {entry['device']}, batch {args.count}, {'guided' if guidance else 'unguided'}: "
          f"{entry['sampler']} sampler ({entry['reason']}) -> {file}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..presets import PRESETS

    listed = PRESETS if args.verbose else {name: preset["train"]["dataset"] for name, preset in PRESETS.items()}
    print(json.dumps(listed, indent=2))
    return 0


def add_import_reference_parser(sub) -> None:
    parser = sub.add_parser("import-reference", help="convert an apple/ml-tarflow checkpoint into a saved model",
                            description="Convert a checkpoint of the reference TarFlow code (a torch-saved "
                            "state_dict) into a model directory (config.json + model.safetensors). Width, blocks, "
                            "layers, classes and affine/additive are read from the weights; the image size, patch size "
                            "and channels must be given (the weights alone cannot tell 16x16 patches of 1 channel from "
                            "8x8 patches of 4). Existing files in --out other than config.json, model.safetensors and "
                            "sampling.json are kept.")
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("--image-size", type=number(int, minimum=1), required=True,
                        help="image height and width in pixels (the reference's --img_size); checked against the "
                        "weights")
    parser.add_argument("--patch-size", type=number(int, minimum=1), required=True,
                        help="the reference's --patch_size")
    parser.add_argument("--channels", type=number(int, minimum=1), required=True,
                        help="image channels (the reference's --channel_size: 3 RGB)")
    parser.add_argument("--num-classes", type=number(int, minimum=0), default=None,
                        help="check the class count (default: from the weights)")
    parser.add_argument("--head-dim", type=number(int, minimum=1), default=64,
                        help="attention head dimension (64 in the reference code)")
    parser.add_argument("--prior", choices=("standard", "learned"), default="standard",
                        help="prior of log p(x) for additive (nvp=False) models: standard N(0, I), the reference's "
                        "loss and bits/dim (default), or learned N(0, var), the prior its samples are drawn from; "
                        "`tarflow eval --prior` gives the other figure")
    parser.add_argument("--noise-std", type=number(float, minimum=0), default=None,
                        help="the Gaussian noise std it was trained with (the reference's --noise_std, e.g. 0.05), "
                        "recorded so that `tarflow sample` denoises by default")
    parser.add_argument("--levels", type=number(int, minimum=2), default=256,
                        help="pixel levels of the data (default 256)")
    parser.add_argument("--out", required=True, help="model directory to write: new, empty, or a saved model to "
                        "replace (. is the current directory, on the same terms)")
    parser.set_defaults(func=cmd_import_reference)


def add_calibrate_parser(sub) -> None:
    parser = sub.add_parser("calibrate", help="measure the fastest exact-enough sampler for this device and batch "
                            "size, for --sampler auto",
                            description="Time the exact sequential sampler against Jacobi and GS-Jacobi strategies, "
                            "block by block, on one seeded batch of --count images, and store the fastest whose "
                            "samples stay within 1e-3 of the sequential ones, keyed by device, batch size and whether "
                            "guidance is on. By default it goes into the model directory's sampling.json (a file the "
                            "library owns); --out FILE writes it elsewhere (for a read-only or shared model "
                            "directory), and `tarflow sample --calibration FILE` reads it. Sampling itself never "
                            "writes into the model directory.")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--count", type=number(int, minimum=1), default=100,
                        help="batch size to calibrate for: sample's --count, or fid's --sample-batch (default 100)")
    parser.add_argument("--guidance", type=number(float, minimum=0), default=0.0, help=GUIDANCE_HELP)
    parser.add_argument("--attn-temp", type=number(float, above=0), default=1.0,
                        help="attention temperature of the unconditional branch (guided sampling, as in sample)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="calibration file to write or add to (default: RUN_OR_MODEL_DIR's sampling.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the calibration measurements")
    parser.set_defaults(func=cmd_calibrate)


def add_presets_parser(sub) -> None:
    parser = sub.add_parser("presets", help="list the named presets")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every preset's fields")
    parser.set_defaults(func=cmd_presets)
