"""Bad input over the whole CLI and the public Python API, generated from the parser itself.

For every option of every `tarflow` command (found by walking `build_parser()`, so a new option is covered
without a new test): each numeric option gets NaN, inf, -1, 0, huge (1e30, or 10^30 for integers) and a
word; each path option a missing path, an existing file, a non-empty directory that is not ours, ``.``,
a location that cannot be written (/proc/version/x, refused even to root), a model directory with a
truncated model.safetensors and a truncated checkpoint file. Every case runs in a fresh
copy of a small world (a tiny digits model, a reference checkpoint, a user's directory and file) and must
end in exit status 2 with a one-line ``error:`` message and no traceback, or exit 0 where the table
ACCEPTED documents why; and every file that existed before is unchanged afterwards, except the output
file the case names (documented: an output file given by --out / --plot is overwritten).

`tarflow train` runs with `train` replaced by its pre-write checks (config validation and the run
directory check run for real; training itself is covered by test_train.py and test_faults.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

import tarflow.cli.demo
import tarflow.train
from tarflow import CheckpointError, FlowConfig, InputError, TarFlow
from tarflow.cli import build_parser, main
from tarflow.data import load_dataset
from tarflow.flows.saving import OWNED_FILES, is_model_dir
from tarflow.io import OutputError
from tarflow.train.run_dir import check_run_dir
from conftest import save_tiny_autoencoder
from test_reference_import import reference_state

pytestmark = pytest.mark.usefixtures("one_thread")

NUMBER_VALUES = {"nan": "nan", "inf": "inf", "negative": "-1", "zero": "0", "huge": None, "word": "abc"}
PATH_VALUES = {"missing": "missing/x", "file": "file.txt", "foreign dir": "notes", "dot": ".",
               "unwritable": "/proc/version/x", "truncated model": "broken", "truncated file": "broken.pth"}
PATH_DESTS = {"path", "checkpoint", "out", "resume", "plot", "weights", "data_dir", "ood_data_dir", "calibration"}
NUMBER_LISTS = {("guidance-accuracy", "guidance"), ("sweep-sampling", "guidance"), ("sweep-sampling", "temperature")}  # comma-separated weights, parsed by the command
OUTPUT_FILES = {("sample", "out"), ("score", "out"), ("guidance-accuracy", "plot"), ("autoencoder eval", "out")}  # overwritten if they exist

# Valid, cheap arguments of each command; each case changes one option of these.
BASE = {
    "train": ["--preset", "tiny", "--out", "runs/new", "--no-progress"],
    "sample": ["model", "--count", "2", "--sampler", "sequential", "--out", "grid.png"],
    "calibrate": ["model", "--count", "2", "--device", "cpu", "--out", "calibration.json"],
    "eval": ["model", "--no-progress"],
    "import-reference": ["ref.pth", "--image-size", "4", "--patch-size", "2", "--channels", "2", "--head-dim", "16",
                         "--out", "imported"],
    "fid": ["model", "--weights", "inception.pt", "--count", "2", "--ref-count", "2", "--no-progress"],
    "guidance-accuracy": ["model", "--count", "2", "--guidance", "0", "--classifier-steps", "2",
                          "--plot", "ga.png", "--no-progress"],
    "score": ["model", "--count", "2", "--out", "scores.csv", "--no-progress"],
    "sweep-sampling": ["model", "--count", "2", "--guidance", "0", "--classifier-steps", "2", "--sampler",
                       "sequential", "--out", "sweep", "--no-progress"],
    "sweep-denoising": ["itarflow", "--count", "2", "--steps", "1", "--classifier-steps", "2", "--sampler",
                        "sequential", "--out", "dsweep", "--no-progress"],
    "presets": [],
    "report": ["run"],
    "demo": ["model", "--device", "cpu"],
    "autoencoder train": ["--dataset", "digits", "--steps", "1", "--batch-size", "2", "--widths", "4,8",
                          "--norm-groups", "4", "--out", "runs/ae", "--no-progress"],
    "autoencoder eval": ["ae", "--no-progress"],
    "autoencoder finetune-decoder": ["latent", "--steps", "1", "--batch-size", "2", "--no-progress"],
    "generate": ["textmodel", "--length", "2", "--prompt", "ab"],
    "fit-score-denoiser": ["model", "--steps", "1", "--no-progress"],
    "distill-denoiser": ["model", "--steps", "1"],
    "temporal-consistency": ["model", "--count", "2", "--classifier-steps", "2", "--sampler", "sequential",
                             "--no-progress"],
}
RESUME_BASE = ["--no-progress"]  # --resume takes the run's saved config: no --preset, --out or overrides

# Exit 0 is the documented behaviour of these cases; every other case must be refused with exit 2.
ZERO_OK = "0 is a valid value of this option"
ACCEPTED = {
    ("sample", "seed", "zero"): ZERO_OK,
    ("sample", "label", "zero"): "class 0",
    ("sample", "guidance", "zero"): "w = 0 is no guidance",
    ("sample", "tol", "zero"): "tol 0: iterate to the exact fixed point",
    ("sample", "temperature", "huge"): "finite: noise scaled by 1e30 saturates every pixel (no error, no NaN)",
    ("sample", "guidance", "huge"): "finite: the guided step saturates every pixel",
    ("sample", "attn_temp", "huge"): "finite: uniform attention on the unconditional branch",
    ("sample", "tol", "huge"): "finite: Jacobi stops after its first sweep",
    ("sample", "out", "file"): "an existing output file is overwritten (as cp and most tools do)",
    ("sample", "out", "truncated file"): "an existing output file is overwritten",
    ("calibrate", "guidance", "zero"): "w = 0 is no guidance",
    ("calibrate", "guidance", "huge"): "finite: the guided step saturates every pixel; the sequential sampler is kept",
    ("calibrate", "attn_temp", "huge"): "finite: uniform attention on the unconditional branch",
    ("eval", "seed", "zero"): ZERO_OK,
    ("import-reference", "num_classes", "zero"): "0 with a class-conditional checkpoint is refused; here: none",
    ("import-reference", "noise_std", "zero"): "no noise recorded (no denoising)",
    ("import-reference", "noise_std", "huge"): "recorded as given; `tarflow sample` would denoise with it",
    ("import-reference", "out", "foreign dir"): "a directory without config.json / model.safetensors: the model "
                                                "is added, the user's files are kept",
    ("import-reference", "out", "dot"): "the current directory, on the same terms",
    ("guidance-accuracy", "seed", "zero"): ZERO_OK,
    ("guidance-accuracy", "temperature", "huge"): "finite: saturated samples",
    ("guidance-accuracy", "guidance", "zero"): "w = 0 is no guidance",
    ("guidance-accuracy", "guidance", "huge"): "finite: the guided step saturates every pixel",
    ("guidance-accuracy", "plot", "file"): "an existing output file is overwritten",
    ("guidance-accuracy", "plot", "truncated file"): "an existing output file is overwritten",
    ("score", "seed", "zero"): ZERO_OK,
    ("generate", "seed", "zero"): ZERO_OK,
    ("score", "out", "file"): "an existing output file is overwritten",
    ("score", "out", "truncated file"): "an existing output file is overwritten",
    ("import-reference", "out", "truncated model"): "a tarflow model directory: its model is replaced (the "
                                                    "damaged one here), other files kept",
}
for name in ("seed", "warmup_steps", "checkpoint_every", "kl_weight", "image_size"):
    ACCEPTED[("autoencoder train", name, "zero")] = ZERO_OK
ACCEPTED[("autoencoder finetune-decoder", "seed", "zero")] = ZERO_OK
ACCEPTED[("autoencoder train", "kl_weight", "huge")] = "finite: the KL term dominates the loss (AdamW steps stay lr)"
for variant in ("file", "truncated file"):
    ACCEPTED[("autoencoder eval", "out", variant)] = "an existing output file is overwritten"
for sweep in ("sweep-sampling", "sweep-denoising"):
    ACCEPTED[(sweep, "seed", "zero")] = ZERO_OK
    ACCEPTED[(sweep, "guidance", "zero")] = "w = 0 is no guidance"
    ACCEPTED[(sweep, "temperature", "huge")] = "finite: saturated samples"
    ACCEPTED[(sweep, "guidance", "huge")] = "finite: the guided step saturates every pixel"
    for variant in ("foreign dir", "dot", "truncated model"):
        ACCEPTED[(sweep, "out", variant)] = ("an output directory: its JSON, picture and cache/ are written into it, "
                                             "the files already there are kept")
NEW_OUTPUT = "a new output path: created, with its parent directories"
RUN_DIR = "a directory holding model/ is read as a run directory (here the world holds one)"
BUILT_IN = "digits is built in: an existing --data-dir is not read"
for command, dest in (("train", "out"), ("sample", "out"), ("import-reference", "out"), ("guidance-accuracy", "plot"),
                      ("score", "out"), ("calibrate", "out"), ("autoencoder train", "out"),
                      ("autoencoder eval", "out"), ("sweep-sampling", "out"), ("sweep-denoising", "out")):
    ACCEPTED[(command, dest, "missing")] = NEW_OUTPUT
for command in ("sample", "calibrate", "eval", "guidance-accuracy", "score", "demo", "sweep-sampling"):
    ACCEPTED[(command, "path", "dot")] = RUN_DIR
for command, dest in (("train", "data_dir"), ("eval", "data_dir"), ("guidance-accuracy", "data_dir"),
                      ("sweep-sampling", "data_dir"), ("sweep-denoising", "data_dir"),
                      ("score", "data_dir"), ("autoencoder train", "data_dir"), ("autoencoder eval", "data_dir"),
                      ("autoencoder finetune-decoder", "data_dir")):
    for variant in ("foreign dir", "dot", "truncated model"):
        ACCEPTED[(command, dest, variant)] = BUILT_IN
# train: every config field goes through the same checks (tarflow.train.config, tarflow.flows.config);
# values the config accepts are documented in `tarflow train --help`.
TRAIN_ACCEPTS = {"zero", "huge", "negative"}


def subcommands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command, nested ones as "autoencoder train"."""
    action = next(a for a in (parser or build_parser())._actions if isinstance(a, argparse._SubParsersAction))
    commands = {}
    for name, sub in action.choices.items():
        nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
        commands.update(subcommands(sub, f"{prefix}{name} ") if nested else {prefix + name: sub})
    return commands


def option_kind(command: str, action: argparse.Action) -> str | None:
    dest = action.dest.split(".")[-1]
    if getattr(action.type, "number_kind", None) is not None or (command, dest) in NUMBER_LISTS:
        return "number"
    if dest in PATH_DESTS and not action.choices:
        return "path"
    return None


def number_value(action: argparse.Action, variant: str) -> str:
    if variant == "huge":
        return str(10 ** 30) if getattr(action.type, "number_kind", float) is int else "1e30"
    return NUMBER_VALUES[variant]


def cases():
    for command, parser in subcommands().items():
        for action in parser._actions:
            kind = option_kind(command, action)
            if kind is None:
                continue
            variants = NUMBER_VALUES if kind == "number" else PATH_VALUES
            for variant in variants:
                yield pytest.param(command, action, variant, id=f"{command.replace(' ', '-')}-{action.dest}-{variant}")


CASES = list(cases())


def argv_for(command: str, action: argparse.Action, value: str) -> list[str]:
    base = list(RESUME_BASE if action.dest == "resume" else BASE[command])
    if not action.option_strings:  # a positional: the first argument of the base
        return [*command.split(), value, *base[1:]]
    return [*command.split(), *base, action.option_strings[0], value]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: (size, mtime in ns, sha256) for files, 'dir' for directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = ("dir",)
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The world every case starts from (copied per case)."""
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, num_classes=10))
    model.save_pretrained(root / "model", metadata={"dataset": "digits", "levels": 17})
    noisy = dataclasses.replace(model.config, noise_conditioning=True)
    TarFlow(noisy).save_pretrained(root / "itarflow", metadata={"dataset": "digits", "levels": 17})
    save_tiny_autoencoder(root / "ae", metadata={"dataset": "digits", "levels": 17})
    latent = FlowConfig(modality="latents", autoencoder="../ae", image_size=4, channels=4, patch_size=1, width=16,
                        num_blocks=2, layers_per_block=1, head_dim=8, latent_scale=1.0)
    TarFlow(latent).save_pretrained(root / "latent", metadata={"dataset": "digits", "levels": 17,
                                                               "noise": "gaussian", "noise_std": 0.3})
    text_model = TarFlow(FlowConfig(modality="text", vocabulary="ab\n", context=4, embed_dim=2, width=16, num_blocks=2,
                                    layers_per_block=1, head_dim=8))
    text_model.save_pretrained(root / "textmodel", metadata={"dataset": "text"})
    torch.save({k: v.float() for k, v in reference_state(3, True).items()}, root / "ref.pth")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("the user's notes\n")
    (root / "file.txt").write_text("the user's file\n")
    shutil.copytree(root / "model", root / "broken")
    weights = root / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "broken.pth").write_bytes((root / "ref.pth").read_bytes()[:1000])
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def stub_train(config, run_dir, progress=True):
    """`train` up to its first write: the config is built and checked, the data found, the run directory checked."""
    load_dataset(config.train.dataset, "test", data_dir=config.train.data_dir or None, progress=False)
    check_run_dir(Path(run_dir))
    return {"bits_per_dim": 0.0, "stderr": 0.0, "images": 0, "draws": 1}


@pytest.mark.parametrize("command, action, variant", CASES)
def test_bad_input(command, action, variant, template, cache, tmp_path, monkeypatch, capsys):
    world = tmp_path / "world"
    shutil.copytree(template, world, copy_function=shutil.copy2)
    monkeypatch.chdir(world)
    monkeypatch.setenv("TARFLOW_CACHE", str(cache))
    monkeypatch.setattr(tarflow.train, "train", stub_train)
    monkeypatch.setattr(tarflow.cli.demo, "launch", lambda app, port: None)  # the app is built, not served
    kind = option_kind(command, action)
    value = number_value(action, variant) if kind == "number" else PATH_VALUES[variant]
    before = snapshot(world)
    code = main(argv_for(command, action, value))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    dest = action.dest.split(".")[-1]
    if code == 0:
        documented = (command, dest, variant) in ACCEPTED or command == "train" and variant in TRAIN_ACCEPTS
        assert documented, f"{command} {action.option_strings or dest} {value!r} was accepted: refuse it, or " \
                           f"document it in ACCEPTED"
    else:
        assert code == 2, err
        last = err.strip().splitlines()[-1]
        assert "error:" in last and len(last) < 1000, err
    after = snapshot(world)
    may_change = set()
    if (command, dest) in OUTPUT_FILES:
        may_change.add(os.path.normpath(value))
    if command == "import-reference" and dest == "out" and is_model_dir(Path(template / value)):
        may_change |= {os.path.normpath(os.path.join(value, f)) for f in OWNED_FILES}
    for path, stat in before.items():
        if path not in may_change:
            assert after.get(path) == stat, f"{path} was changed or removed by {command} {dest}={value!r}"


# ----- the Python API -------------------------------------------------------------------------------
@pytest.fixture
def model():
    torch.manual_seed(0)
    return TarFlow(FlowConfig(image_size=4, patch_size=2, width=16, num_blocks=2, layers_per_block=1, head_dim=8))


@pytest.mark.parametrize("target", ["file", "foreign config", "foreign weights", "unwritable"])
def test_save_pretrained_refuses_what_it_does_not_own(target, model, tmp_path):
    (tmp_path / "file").write_text("mine")
    for name in ("config.json", "model.safetensors"):
        (tmp_path / f"foreign {name.split('.')[0].replace('model', 'weights')}").mkdir()
    (tmp_path / "foreign config" / "config.json").write_text("{}")
    (tmp_path / "foreign weights" / "model.safetensors").write_bytes(b"not ours")
    before = snapshot(tmp_path)
    path = "/proc/version/x" if target == "unwritable" else tmp_path / target
    with pytest.raises(OutputError):
        model.save_pretrained(path)
    assert snapshot(tmp_path) == before


def test_save_pretrained_into_dot_and_a_non_empty_directory(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    model.save_pretrained(".")
    model.save_pretrained(".")
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert TarFlow.from_pretrained(".").config == model.config


@pytest.mark.parametrize("damage", ["truncated weights", "empty weights", "truncated config", "weights missing"])
def test_from_pretrained_of_a_damaged_model(damage, model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    weights, config = tmp_path / "m" / "model.safetensors", tmp_path / "m" / "config.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif damage == "empty weights":
        weights.write_bytes(b"")
    elif damage == "truncated config":
        config.write_text(config.read_text()[:-30])
    else:
        weights.unlink()
    with pytest.raises(CheckpointError):
        TarFlow.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("x", [
    torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 4, 4), torch.zeros(1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
    torch.full((2, 1, 4, 4), float("nan")), torch.full((2, 1, 4, 4), float("inf")), [[0.0]],
], ids=["size", "channels", "rank", "dtype", "nan", "inf", "list"])
def test_log_prob_of_bad_images(x, model):
    with pytest.raises(InputError):
        model.log_prob(x)


def test_log_prob_outside_the_data_range_is_a_finite_density(model):
    """Documented: log p is a density on all of R^D; values outside [-1, 1] get a finite (low) log p."""
    assert torch.isfinite(model.log_prob(torch.full((2, 1, 4, 4), 50.0))).all()
