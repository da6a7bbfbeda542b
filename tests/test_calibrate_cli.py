"""Calibration is explicit (`tarflow calibrate`); sampling commands only read it and never write into the model
directory; `sample`, `fid` and `guidance-accuracy` share the --sampler default."""

from __future__ import annotations

import json
import os

import pytest

from tarflow.cli import build_parser, main
from tarflow.sampling.calibrate import SAMPLING_NAME, entry_key, read_calibration
from test_bad_inputs import snapshot
from test_jacobi import longer_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_dir(tmp_path):
    longer_model().save_pretrained(tmp_path / "m", metadata={"levels": 256})
    return tmp_path / "m"


@pytest.mark.parametrize("flags", [[], ["--guidance", "1"], ["--sampler", "jacobi"], ["--sampler", "gs-jacobi"],
                                   ["--sampler", "sequential"]])
def test_sample_writes_nothing_into_the_model_directory(model_dir, tmp_path, flags):
    before = snapshot(model_dir)
    os.chmod(model_dir, 0o555)  # read-only (root may still write: the snapshot is the check)
    try:
        assert main(["sample", str(model_dir), "--count", "4", "--out", str(tmp_path / "g.png"), *flags]) == 0
    finally:
        os.chmod(model_dir, 0o755)
    assert snapshot(model_dir) == before
    assert (tmp_path / "g.png").is_file()


def test_calibrate_writes_sampling_json_and_sample_reads_it(model_dir, tmp_path, capsys):
    before = snapshot(model_dir)
    assert main(["calibrate", str(model_dir), "--count", "4", "--guidance", "1", "-v"]) == 0
    said = capsys.readouterr().out
    assert "calibration: sequential:" in said and f"-> {model_dir / SAMPLING_NAME}" in said and "guided" in said
    after = snapshot(model_dir)
    assert set(after) - set(before) == {SAMPLING_NAME}  # the one file it owns, nothing else changed
    assert all(after[path] == stat for path, stat in before.items())
    import torch
    assert list(read_calibration(model_dir)) == [entry_key(torch.device("cpu"), 4, True)]
    assert main(["sample", str(model_dir), "--count", "4", "--guidance", "1", "--out", str(tmp_path / "g.png")]) == 0
    captured = capsys.readouterr()
    assert f"chosen automatically (from {model_dir / SAMPLING_NAME}" in captured.out and captured.err == ""
    assert main(["sample", str(model_dir), "--count", "4", "--out", str(tmp_path / "g.png")]) == 0  # unguided: none
    assert "no calibration" in capsys.readouterr().out


def test_calibrate_out_keeps_a_shared_model_directory_untouched(model_dir, tmp_path, capsys):
    before = snapshot(model_dir)
    file = tmp_path / "calibrations" / "mine.json"
    assert main(["calibrate", str(model_dir), "--count", "4", "--out", str(file)]) == 0
    assert file.is_file() and snapshot(model_dir) == before
    capsys.readouterr()
    assert main(["sample", str(model_dir), "--count", "4", "--calibration", str(file),
                 "--out", str(tmp_path / "g.png")]) == 0
    assert f"chosen automatically (from {file}" in capsys.readouterr().out
    assert snapshot(model_dir) == before


@pytest.mark.parametrize("argv, words", [
    (["sample", "M", "--calibration", "missing.json"], "no calibration file there"),
    (["sample", "M", "--sampler", "sequential", "--calibration", "cal.json"], "applies to --sampler auto only"),
    (["calibrate", "M", "--out", "notes.txt"], "is not a tarflow sampling calibration"),
    (["calibrate", "M", "--out", "."], "is a directory"),
])
def test_calibration_errors_are_messages(model_dir, tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "cal.json").write_text("{}")
    before = snapshot(tmp_path)
    assert main([str(model_dir) if arg == "M" else arg for arg in argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_sampling_commands_share_the_sampler_default():
    parser = build_parser()
    defaults = {command: parser.parse_args([command, "m", *extra]).sampler
                for command, extra in (("sample", []), ("fid", ["--weights", "w.pt"]), ("guidance-accuracy", []))}
    assert defaults == {"sample": "auto", "fid": "auto", "guidance-accuracy": "auto"}


def test_calibration_file_is_json_the_library_owns(model_dir):
    from tarflow.flows.saving import OWNED_FILES

    assert SAMPLING_NAME in OWNED_FILES  # save_pretrained replaces it with the model, keeps everything else
    assert main(["calibrate", str(model_dir), "--count", "2"]) == 0
    assert json.loads((model_dir / SAMPLING_NAME).read_text())["format"] == "tarflow-sampling"
