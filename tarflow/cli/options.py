"""Argument types and option groups shared by the commands: numbers that refuse NaN and words, booleans,
labels, integer lists, one flag per config field, and the sampling options of the metric commands."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from ..configs import field_types
from ..errors import ConfigError
from ..flows import FlowConfig
from ..train.config import RunConfig, TrainConfig

SECTIONS = {"model": FlowConfig, "train": TrainConfig}
MAX_INT = 2 ** 63 - 1  # the largest integer a torch tensor or seed holds
SAMPLERS = ("auto", "sequential", "jacobi", "gs-jacobi", "video-jacobi")
SAMPLER_HELP = ("auto (default): the sampler `tarflow calibrate` measured fastest for this device, batch size and "
                "guidance setting, else the exact sequential one; or force one (video-jacobi: video models, frames "
                "in order and the tokens of each frame by Jacobi)")
CALIBRATION_HELP = ("calibration file of --sampler auto, written by `tarflow calibrate --out FILE` (default: the "
                    "model directory's sampling.json)")
TEMPERATURE_HELP = "scale of the prior noise, > 0 (default 1.0)"
GUIDANCE_HELP = ("classifier-free guidance weight w >= 0 (default 0: no guidance); negative weights are refused "
                 "(the reference code treats w <= 0 as no guidance)")
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
RULE_HELP = "guidance rule (default: starflow for latent models, tarflow otherwise)"
LATENT_DENOISE_HELP = ("latent models: how samples become images. Default: the model's fine-tuned decoder "
                       "(model/denoising_decoder, made for its training noise std) when it has one, else one Tweedie "
                       "step in latent space; tweedie forces the Tweedie step (to compare it with the decoder); none "
                       "decodes the noisy latents. Pixel models trained with gaussian noise: tweedie (default, one "
                       "step) or none (the raw samples, to measure what the step does). The JSON says which")


def number(kind: type, minimum: float | None = None, above: float | None = None):
    """An argparse type: an int or a finite float, at least ``minimum`` or greater than ``above``.

    NaN, inf, integers beyond 2^63 - 1 and words are refused at parse time (exit 2, the option named).
    """
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
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


def parse_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (argparse's type=bool would read "false" as True)."""
    value = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


def parse_label(text: str) -> int | str:
    """A class index (0 or more), or ``null``: the null class, i.e. unconditional samples."""
    return "null" if text.lower() in ("null", "none", "uncond") else number(int, minimum=0)(text)


parse_label.number_kind = int


def parse_ints(text: str) -> int | list[int]:
    """"2" -> 2, "2,2,24" -> [2, 2, 24]: one integer, or one per item (e.g. layers per block)."""
    values = [number(int)(part) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


parse_ints.number_kind = int


def parse_floats(text: str) -> list[float]:
    """"0.9,0.6,0.3,0" -> [0.9, 0.6, 0.3, 0.0]: finite numbers, one per item (e.g. NTM's signal levels)."""
    return [number(float)(part) for part in text.split(",")]


parse_floats.number_kind = float


def parse_weights_list(text: str) -> list[float]:
    """"0,1,2,4" -> [0.0, 1.0, 2.0, 4.0]: guidance weights, each finite and >= 0."""
    try:
        weights = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--guidance must be comma-separated numbers such as 0,1,2,4, got {text!r}") from None
    if not weights or any(not 0 <= weight < math.inf for weight in weights):
        raise ConfigError(f"--guidance needs one or more non-negative weights such as 0,1,2,4, got {text!r}")
    return weights


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (--batch-size), with the field's help text and the default preset's value."""
    from ..presets import DEFAULT_PRESET, get_preset

    preset = get_preset(DEFAULT_PRESET)
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} config (override any field of the preset)")
        types, defaults = field_types(cls), getattr(preset, section)
        for field in dataclasses.fields(cls):
            kind, choices = types[field.name], field.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else getattr(kind, "__name__", "").upper()
            if kind is bool:
                kind, metavar = parse_bool, "{true,false}"
            elif kind == int | list[int]:
                kind, metavar = parse_ints, "INT[,INT...]"
            elif kind == list[float] | None:
                kind, metavar = parse_floats, "FLOAT[,FLOAT...]"
            elif kind in (int, float):
                kind = number(kind)
            default = getattr(defaults, field.name)
            group.add_argument(f"--{field.name.replace('_', '-')}", dest=f"{section}.{field.name}", type=kind,
                               default=None, metavar=metavar, choices=choices,
                               help=f"{field.metadata['help']} ({DEFAULT_PRESET}: {default!r})")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config of ``args.preset`` with every config flag given on the command line applied."""
    from ..presets import get_preset

    base = get_preset(args.preset).to_dict()
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".")
            base[section][name] = value
    return RunConfig.from_dict(base)


def overrides_given(args: argparse.Namespace) -> list[str]:
    """The config fields set on the command line."""
    return [key.split(".")[1] for key, value in vars(args).items() if "." in key and value is not None]


def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse, before any work, an output file path that is a directory or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory: give a file path such as {path / 'out.png'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a directory")
    return path


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """--sampler and --calibration: the same default (auto) for every command that samples."""
    parser.add_argument("--sampler", choices=SAMPLERS, default="auto", help=SAMPLER_HELP)
    parser.add_argument("--calibration", default=None, metavar="FILE", help=CALIBRATION_HELP)


def add_sampling_options(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """The options of commands that draw many samples for a metric (fid, guidance-accuracy)."""
    parser.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default=None, help=RULE_HELP)
    parser.add_argument("--temperature", type=number(float, above=0), default=1.0, help=TEMPERATURE_HELP)
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help=seed_help)
    add_sampler_options(parser)
    parser.add_argument("--sample-batch", type=number(int, minimum=1), default=256,
                        help="samples per sampler call (default 256)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_latent_denoise_option(parser: argparse.ArgumentParser) -> None:
    """--denoise tweedie|none (and --no-denoise) of commands whose only denoising choice is a latent model's."""
    parser.add_argument("--denoise", nargs="?", const="tweedie", default=None, choices=("tweedie", "none"),
                        help=LATENT_DENOISE_HELP)
    parser.add_argument("--no-denoise", dest="denoise", action="store_const", const="none",
                        help="no denoising (as --denoise none)")


def add_denoise_options(parser: argparse.ArgumentParser, denoise_help: str) -> None:
    """--denoise tweedie|iterative|none (and --no-denoise), with the iterative denoiser's steps, dynamics and clip."""
    parser.add_argument("--denoise", nargs="?", const="tweedie", default=None, choices=("tweedie", "iterative", "none"),
                        help=denoise_help)
    parser.add_argument("--no-denoise", dest="denoise", action="store_const", const="none",
                        help="no denoising (as --denoise none)")
    parser.add_argument("--denoise-steps", type=number(int, minimum=1), default=None,
                        help="--denoise iterative: noise levels from t1 down to t0, then 0 (default 10; 1 is one "
                        "Tweedie step at t1)")
    parser.add_argument("--dynamics", choices=("ode", "sde"), default=None,
                        help="--denoise iterative: ode (deterministic, DDIM-like; default) or sde (fresh noise at "
                        "each step)")
    parser.add_argument("--denoise-clip", action="store_true",
                        help="--denoise iterative: clamp each step's denoised estimate to [-1, 1]")


def add_first_frame_temperature_option(parser: argparse.ArgumentParser) -> None:
    """--first-frame-temperature, whose default is the setting stored with the model (`stored_settings`)."""
    parser.add_argument("--first-frame-temperature", type=number(float, above=0), default=None, metavar="T0",
                        help="video models, clips drawn whole: the prior temperature of the first frame, the later "
                        "frames keeping --temperature (default: the model's stored setting, else --temperature); "
                        "continued frames always take --temperature")


def add_stored_guidance_options(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--guidance and --guidance-rule whose default is the setting stored with the model (`stored_settings`)."""
    parser.add_argument("--guidance", type=number(float, minimum=0), default=None,
                        help=f"{what}classifier-free guidance weight w >= 0 (default: the model's stored setting, "
                        "else 0: no guidance)")
    parser.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default=None,
                        help="guidance rule (default: the model's stored one, else starflow for latent models and "
                        "tarflow otherwise)")
