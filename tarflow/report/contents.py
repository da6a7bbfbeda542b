"""What a run directory holds, read once for the report: config, metric records, results, sample grids, and the
commands that reproduce them."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_SUFFIXES = (".png", ".gif", ".txt")  # image grids; GIFs of video runs and text samples, when they write them
MOST_GRIDS = 12  # sample files shown from during training: a long run's page stays a few MB


@dataclass
class Sample:
    """One sample file: a grid of images (PNG, or a GIF for video), or text; ``step`` None for the final one."""

    path: Path
    step: int | None


@dataclass
class RunContents:
    run_dir: Path
    config: dict[str, Any]
    version: str | None
    records: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    fids: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return self.config["train"]["steps"]

    @property
    def last_step(self) -> int:
        return max((record["step"] for record in self.records), default=0)

    @property
    def finished(self) -> bool:
        return self.evaluation is not None and self.evaluation.get("steps") == self.steps


def read_run(run_dir: str | Path) -> RunContents:
    """Read ``run_dir``; a metric line cut short by a crash, or a result file that is not JSON, is left out."""
    from ..train.run_dir import load_run_config

    run_dir = Path(run_dir)
    config = load_run_config(run_dir).to_dict()  # a ConfigError names what is missing or damaged
    version = (read_json(run_dir / "config.json") or {}).get("tarflow_version")
    fids = [(path, read_json(path)) for path in sorted(run_dir.glob("fid*.json"))]
    pictures = [run_dir / name for name in ("guidance_accuracy.png",) if (run_dir / name).is_file()]
    return RunContents(run_dir, config, version, read_records(run_dir / "metrics.jsonl"),
                       read_json(run_dir / "eval.json"), [(path, result) for path, result in fids
                                                          if result and "fid" in result],
                       find_samples(run_dir), pictures)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The metric records of metrics.jsonl (one JSON object per line)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def find_samples(run_dir: Path, most: int = MOST_GRIDS) -> list[Sample]:
    """samples/step_NNNNNN.* in step order (at most ``most``, evenly spaced, the first and last among them), then
    the final samples.* (the trainer's names)."""
    during = []
    for path in (run_dir / "samples").glob("step_*"):
        number = path.stem.removeprefix("step_")
        if path.suffix in SAMPLE_SUFFIXES and number.isdigit():
            during.append(Sample(path, int(number)))
    during.sort(key=lambda sample: sample.step)
    if len(during) > most:
        during = [during[round(i * (len(during) - 1) / (most - 1))] for i in range(most)]
    final = [Sample(run_dir / f"samples{suffix}", None) for suffix in SAMPLE_SUFFIXES
             if (run_dir / f"samples{suffix}").is_file()]
    return during + final


def train_command(config: dict[str, Any], run_dir: Path) -> str:
    """`tarflow train` from the preset nearest to ``config``, with a flag for every field that differs."""
    from ..presets import PRESETS, get_preset

    def differences(preset: str) -> list[tuple[str, Any]]:
        base = get_preset(preset).to_dict()
        return [(name, value) for section in ("model", "train") for name, value in config[section].items()
                if base[section].get(name) != value]

    preset = min(PRESETS, key=lambda name: len(differences(name)))
    words = ["tarflow", "train", "--preset", preset]
    for name, value in differences(preset):
        words += ["--" + name.replace("_", "-"), flag_value(value)]
    return join(words + ["--out", str(run_dir)])


def flag_value(value: Any) -> str:
    """A config value as `tarflow train` parses it: true/false, 2,2,24 for lists."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def eval_command(evaluation: dict[str, Any], run_dir: Path, data_dir: str) -> str:
    """The `tarflow eval` command that repeats the trainer's final evaluation (a latent model's too: one draw)."""
    words = ["tarflow", "eval", str(run_dir), "--draws", str(evaluation.get("draws", 1))]
    return join(words + (["--data-dir", data_dir] if data_dir else []))


def fid_command(result: dict[str, Any], run_dir: Path) -> str:
    """The `tarflow fid` command of a saved `tarflow fid` result."""
    reference = result.get("reference", {})
    words = ["tarflow", "fid", str(run_dir), "--weights", result.get("extractor", {}).get("file", "WEIGHTS"),
             "--count", str(result["samples"])]
    options = {"--split": reference.get("split"), "--ref-count": reference.get("images"),
               "--guidance": result.get("guidance") or None, "--guidance-rule": result.get("guidance_rule"),
               "--temperature": result.get("temperature"), "--seed": result.get("seed"),
               "--denoise": result.get("denoise") if result.get("denoise") in ("tweedie", "none") else None}
    for option, value in options.items():
        if value is not None:
            words += [option, str(value)]
    return join(words)


def join(words: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)
