"""`tarflow report`: rewrite a run's self-contained HTML page, RUN/report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def cmd_report(args: argparse.Namespace) -> int:
    from ..flows.saving import is_model_dir
    from ..report import write_report
    from ..train.run_dir import RUN_CONFIG

    run_dir = Path(args.path)
    if is_model_dir(run_dir) or not (run_dir / RUN_CONFIG).is_file():
        what = "a saved model directory" if is_model_dir(run_dir) else f"no {RUN_CONFIG}"
        raise ConfigError(f"{args.path} is not a training run directory ({what}): give the --out directory of "
                          f"`tarflow train`, e.g. runs/digits")
    path = write_report(run_dir)
    print(f"report: {path}  (one self-contained page; open it in a browser)")
    return 0


def add_report_parser(sub) -> None:
    parser = sub.add_parser("report", help="write RUN/report.html: config, curves, samples, results in one page",
                            description="Write one self-contained HTML page (images inlined, no network needed) "
                            "about a training run: config, bits/dim curves, learning rate and gradient norm, "
                            "attention entropy, sample grids over training, evaluation and FID results with the "
                            "commands that repeat them, timing. The trainer also writes it at every evaluation "
                            "and at the end.")
    parser.add_argument("path", metavar="RUN_DIR", help="a run directory of `tarflow train`")
    parser.set_defaults(func=cmd_report)
