"""`tarflow train | sample | calibrate | eval | generate | ...`: the command line, a thin layer over the Python API.

One module per command group parses arguments, calls the library and prints: train (train), sample (sample and
the sampler choice), evaluate (eval, fid, guidance-accuracy, score), autoencoder (autoencoder train | eval |
finetune-decoder), sweep (sweep-sampling), models (import-reference, calibrate, presets), report (report), demo
(demo) and text (generate, and eval of text models); options holds the argument types shared by all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .. import __version__
from ..configs import unknown_field_error
from ..errors import TarflowError
from .autoencoder import add_autoencoder_parser
from .demo import add_demo_parser
from .evaluate import add_eval_parser, add_fid_parser, add_guidance_accuracy_parser, add_score_parser
from .models import add_calibrate_parser, add_import_reference_parser, add_presets_parser
from .options import SECTIONS, config_from_args, number, parse_bool, parse_ints, parse_label
from .report import add_report_parser
from .sample import add_sample_parser
from .sweep import add_sweep_denoising_parser, add_sweep_parser
from .text import add_generate_parser
from .train import add_train_parser
from .trajectory import add_distill_denoiser_parser
from .video import add_fit_score_denoiser_parser, add_temporal_consistency_parser

__all__ = ["build_parser", "config_from_args", "main", "number", "parse_bool", "parse_ints", "parse_label",
           "run_reporting_errors"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tarflow", description="Transformer autoregressive normalizing flows: "
                                     "train, sample and evaluate exact-likelihood image models.")
    parser.add_argument("--version", action="version", version=f"tarflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train_parser, add_sample_parser, add_calibrate_parser, add_eval_parser,
                add_import_reference_parser, add_fid_parser, add_guidance_accuracy_parser, add_sweep_parser,
                add_sweep_denoising_parser, add_score_parser,
                add_presets_parser, add_report_parser, add_demo_parser,
                add_autoencoder_parser, add_generate_parser, add_temporal_consistency_parser,
                add_fit_score_denoiser_parser, add_distill_denoiser_parser):
        add(sub)
    return parser


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
    given = sys.argv[1:] if argv is None else argv
    # --batch_size and --batch-size alike
    argv = [arg.replace("_", "-") if arg.startswith("--") and "=" not in arg else arg for arg in given]
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # argparse printed its message (a bad value: status 2), or --help / --version (0)
        return e.code if isinstance(e.code, int) else 2

    def run() -> int:
        if unknown:
            flag = unknown[0]
            if args.command == "train" and flag.startswith("--"):
                known = [field.name for cls in SECTIONS.values() for field in dataclasses.fields(cls)]
                raise unknown_field_error(flag[2:].split("=")[0].replace("-", "_"), known, "config")
            try:
                parser.parse_args(argv)  # argparse's own message and exit 2
            except SystemExit as e:
                return e.code if isinstance(e.code, int) else 2
        return args.func(args)

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
