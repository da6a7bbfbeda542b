"""`tarflow generate` and `tarflow eval` of text models (TarFlowLM and its discrete baseline)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .interleaved import add_generate_options
from .options import DEVICE_HELP, number


def is_text_model(path: str) -> bool:
    """Whether the run or model directory ``path`` holds a text model (errors for a bad path, as loading would)."""
    from ..flows.saving import read_config
    from ..runs import resolve_model_dir

    return read_config(resolve_model_dir(path)).modality == "text"


def load_text_model(path: str, device: str):
    from ..flows.language import load_language_model
    from ..runs import resolve_model_dir
    from ..train.device import pick_device

    model_dir = resolve_model_dir(path)
    return load_language_model(model_dir, pick_device(device)), model_dir


def cmd_eval_text(args: argparse.Namespace) -> int:
    """Bits/char of a split, with the name of the bound, as JSON."""
    from ..data.text import load_text
    from ..train.text import evaluate_text

    model, model_dir = load_text_model(args.path, args.device)
    config, metadata = model.config, model.metadata
    name = args.dataset or metadata.get("dataset", "text")
    data_dir = args.data_dir if args.data_dir is not None else metadata.get("data_dir") or None
    data = load_text(name, args.split, config.context, config.tokenizer, data_dir, config.vocabulary)
    result = evaluate_text(model, data, config.context, args.seed, args.draws)
    result.update(dataset=name, split=args.split, model=str(model_dir), architecture=config.architecture)
    print(json.dumps(result, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..data.text import build_tokenizer
    from ..sampling.text import generate
    from .interleaved import GENERATE_OPTIONS, cmd_generate_interleaved, is_pretzel_model, refuse_pretzel_options

    if is_pretzel_model(args.path):
        return cmd_generate_interleaved(args)
    refuse_pretzel_options(args, GENERATE_OPTIONS)
    args.length = 500 if args.length is None else args.length
    args.temperature = 1.0 if args.temperature is None else args.temperature
    model, _ = load_text_model(args.path, args.device)
    tokenizer = build_tokenizer(model.config.tokenizer, model.config.vocabulary)
    prompt = torch.tensor(tokenizer.encode(args.prompt), dtype=torch.long)
    started = time.perf_counter()
    ids = generate(model, prompt, args.length, args.temperature, torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - started
    print(tokenizer.decode(ids.tolist()))
    print(f"{args.length} characters in {seconds:.2f} s ({args.length / seconds:.1f} characters/s), "
          f"{model.config.architecture}, chars_per_token={model.config.chars_per_token}, "
          f"temperature {args.temperature}", file=sys.stderr)
    return 0


def add_generate_parser(sub) -> None:
    parser = sub.add_parser("generate", help="continue a prompt with a trained text model, or a pretzel model's "
                            "interleaved words and images",
                            description="Text models: print the prompt and LENGTH generated characters. A flow "
                            "generates windows of its context in one pass per block, holding the prompt's vectors "
                            "fixed (exact for order=same; an approximation with alternating orders, see "
                            "tarflow/sampling/text.py). Pretzel models (STARFlow2): continue a prompt of words and "
                            "<image> markers, e.g. --prompt \"a seven : <image>\" (the model draws the image, then "
                            "goes on) or --prompt \"<image> shows\" --image digit.png (captioning); see "
                            "docs/starflow2.md.")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--prompt", default="", help="text to continue (default: none); every character must be in "
                        "the model's vocabulary")
    parser.add_argument("--length", type=number(int, minimum=1), default=None,
                        help="text models: characters to generate (default 500)")
    parser.add_argument("--temperature", type=number(float, above=0), default=None,
                        help="flow: scale of the prior noise; baseline: softmax temperature (default 1.0); pretzel "
                        "models: of the images' prior noise (default: the model's stored sampling temperature)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="noise seed (default 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_generate_options(parser)
    parser.set_defaults(func=cmd_generate)

