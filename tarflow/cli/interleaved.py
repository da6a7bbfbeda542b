"""`tarflow generate` and `tarflow eval` of pretzel models (STARFlow2: interleaved words and images). `cli/text.py`
dispatches here on the model's architecture; the options only pretzel models take are added here and refused for
other models."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import ConfigError
from .options import number

GENERATE_OPTIONS = ("image", "count", "word_temperature", "max_length", "out")  # pretzel models only
EVAL_OPTIONS = ("text_to_image_count", "image_to_text_count", "arithmetic_count", "likelihood_count")


def is_pretzel_model(path: str) -> bool:
    """Whether the run or model directory ``path`` holds a pretzel model (errors for a bad path, as loading would)."""
    from ..flows.saving import read_config
    from ..runs import resolve_model_dir

    return read_config(resolve_model_dir(path)).architecture == "pretzel"


def refuse_pretzel_options(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """A ConfigError when an option that only pretzel models take was given for another model."""
    given = [name for name in names if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"{flags}: options of pretzel models (interleaved words and images); {args.path} holds "
                          f"another kind of model")


def load_pretzel(path: str, device: str):
    from ..flows.pretzel import Pretzel
    from ..runs import resolve_model_dir
    from ..train.device import pick_device

    model_dir = resolve_model_dir(path)
    return Pretzel.from_pretrained(model_dir, map_location=pick_device(device)), model_dir


def training_noise(model) -> float:
    """The std of the gaussian noise the model was trained with, 0 for uniform dequantization."""
    return float(model.metadata.get("noise_std", 0.0)) if model.metadata.get("noise") == "gaussian" else 0.0


def cmd_generate_interleaved(args: argparse.Namespace) -> int:
    """Generate --count continuations of --prompt; print their words, write DIR/sequences.html and .png."""
    import torch

    from ..data.interleaved import parse_prompt
    from ..interleaved_io import read_image_file, row_words, write_sequences
    from ..sampling.interleaved import generate

    if args.length is not None:
        raise ConfigError("--length counts characters of text models: a pretzel model takes --max-length (positions)")
    model, _ = load_pretzel(args.path, args.device)
    config = model.config
    images = [read_image_file(file, config.image_size, config.channels) for file in args.image or []]
    ids, slots = parse_prompt(args.prompt, images)
    temperature = args.temperature
    if temperature is None:
        temperature = float(model.metadata.get("sampling", {}).get("temperature", 1.0))
    word_temperature = 1.0 if args.word_temperature is None else args.word_temperature
    started = time.perf_counter()
    generated = generate(model, ids, slots, args.max_length, temperature, word_temperature,
                         torch.Generator().manual_seed(args.seed), training_noise(model), args.count or 4)
    seconds = time.perf_counter() - started
    batch = generated.batch.to("cpu")
    for row in range(len(batch.ids)):
        print(" ".join(row_words(batch, row)))
    written = ""
    if args.out is not None:
        page, strip = write_sequences(batch, generated.given.cpu(), args.out)
        written = f"; wrote {page} and {strip}"
    print(f"{len(batch.ids)} sequences in {seconds:.2f} s, image temperature {temperature:g}, word temperature "
          f"{word_temperature:g}{written}", file=sys.stderr)
    return 0


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """The options of `tarflow generate` for pretzel models."""
    parser.add_argument("--image", action="append", metavar="FILE",
                        help="pretzel models: an image file for an <image> of the prompt, left to right (repeat for "
                        "several); read grey, resized to the model's size, 8-bit levels at their bin centres. An "
                        "<image> without a file is allowed only at the end of the prompt (the model draws it)")
    parser.add_argument("--count", type=number(int, minimum=1), default=None,
                        help="pretzel models: sequences to generate from the prompt (default 4)")
    parser.add_argument("--word-temperature", type=number(float, minimum=0), default=None,
                        help="pretzel models: softmax temperature of the words (0: the most likely word; default 1)")
    parser.add_argument("--max-length", type=number(int, minimum=1), default=None,
                        help="pretzel models: positions of a sequence at most, an image's tokens included (default: "
                        "the model's context)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="pretzel models: write DIR/sequences.html (words with their images inline, given ones "
                        "framed) and DIR/sequences.png (a strip of images per sequence); other files in DIR are kept")


def cmd_eval_interleaved(args: argparse.Namespace) -> int:
    """The task metrics of `tarflow.metrics.interleaved`, as JSON."""
    from ..data.interleaved import load_interleaved
    from ..metrics.interleaved import DEFAULT_COUNTS, evaluate_tasks

    if args.split not in ("train", "test"):
        raise ConfigError(f"--split {args.split}: pretzel models are evaluated on the train or test split")
    model, model_dir = load_pretzel(args.path, args.device)
    data_dir = args.data_dir if args.data_dir is not None else model.metadata.get("data_dir") or None
    data = load_interleaved(args.split, seed=args.seed, patch_size=model.config.patch_size, data_dir=data_dir,
                            progress=not args.no_progress)
    counts = {task: getattr(args, f"{task.replace('-', '_')}_count") for task in DEFAULT_COUNTS}
    modality = model.metadata.get("single_modality") or ""
    if modality:  # a baseline: its likelihood on its view of the sequences, no task that needs both modalities
        data = data.one_modality(modality)
        asked = [task for task, count in counts.items() if task != "likelihood" and count]
        if asked:
            raise ConfigError(f"{args.path} is a {modality}-only baseline (single_modality={modality}): the tasks "
                              f"{asked} need words and images; measure them on the joint model")
        counts = {task: count if task == "likelihood" else 0 for task, count in counts.items()}
    counts = {task: DEFAULT_COUNTS[task] if count is None else count for task, count in counts.items()}
    result = evaluate_tasks(model, data, counts, training_noise(model), args.seed, data_dir=data_dir,
                            progress=not args.no_progress)
    result.update(dataset="interleaved-mnist", split=args.split, model=str(model_dir))
    if modality:
        result["single_modality"] = modality
    print(json.dumps(result, indent=2))
    return 0


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """The options of `tarflow eval` for pretzel models: how many sequences each task measures (0 skips it)."""
    tasks = {"likelihood": "test sequences for bits/word, bits/char and image bits/dim (default: the whole split)",
             "text-to-image": "generations per held-out two-image prompt for class consistency (default 20)",
             "image-to-text": "test images captioned for image-to-text accuracy (default 300)",
             "arithmetic": "test image pairs for arithmetic accuracy (default 300)"}
    for task, text in tasks.items():
        parser.add_argument(f"--{task}-count", type=number(int, minimum=0), default=None,
                            help=f"pretzel models: {text}; 0 skips it")
