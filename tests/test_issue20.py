"""The seven reproductions of issue 20, one test each: every one failed on the code before the fix.

Never delete what the user did not create (saves into a directory keep its other entries; a file or a
foreign model directory is refused before any work), and every option's bad values get a clear error.
"""

from __future__ import annotations

import json

import pytest
import torch

from tarflow import FlowConfig, SequentialSampler, TarFlow
from tarflow.cli import main
from tarflow.flows.reference import convert_reference_state
from tarflow.io import OutputError
from test_reference_import import C, HD, P, SIZE, ref_log_prob, reference_state

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(num_classes: int = 0) -> TarFlow:
    torch.manual_seed(0)
    return TarFlow(FlowConfig(image_size=4, patch_size=2, width=16, num_blocks=2, layers_per_block=1, head_dim=8,
                              num_classes=num_classes))


def tree(root) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.fixture
def reference_ckpt(tmp_path):
    """An apple/ml-tarflow checkpoint of 4x4 images, 2 channels, patch 2 (tokens of 8 values), 3 classes."""
    file = tmp_path / "ckpt" / "ref.pth"
    file.parent.mkdir()
    torch.save(reference_state(3, True), file)
    return file


def import_argv(ckpt, out, *extra) -> list[str]:
    return ["import-reference", str(ckpt), "--image-size", str(SIZE), "--patch-size", str(P), "--channels", str(C),
            "--head-dim", str(HD), "--out", str(out), *extra]


def test_issue20_1_save_keeps_user_files(tmp_path, reference_ckpt):
    user = tmp_path / "userdir"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("notes\n")
    (user / "sub" / "data.bin").write_bytes(b"\x00\x01")
    model = tiny()
    model.save_pretrained(user)
    model.save_pretrained(user)  # replacing our own files keeps the user's too
    assert (user / "notes.txt").read_text() == "notes\n" and (user / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    assert TarFlow.from_pretrained(user).config == model.config
    assert main(import_argv(reference_ckpt, user)) == 0  # the CLI's import replaces the model, not the notes
    assert (user / "notes.txt").read_text() == "notes\n" and (user / "sub" / "data.bin").is_file()
    assert TarFlow.from_pretrained(user).config.output_norm == "none"
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "model.safetensors", "notes.txt", "sub"]
    # A directory whose config.json is someone else's is refused, untouched.
    other = tmp_path / "hf"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    before = tree(other)
    with pytest.raises(OutputError, match="not a tarflow model directory"):
        model.save_pretrained(other)
    assert tree(other) == before


def test_issue20_2_import_reference_out_dot(tmp_path, reference_ckpt, monkeypatch, capsys):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    monkeypatch.chdir(cwd)
    assert main(import_argv(reference_ckpt, ".")) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert TarFlow.from_pretrained(".").config.num_classes == 3
    assert (cwd / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in cwd.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]


def test_issue20_3_out_is_a_file(tmp_path, reference_ckpt, capsys):
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    before = tree(tmp_path)
    assert main(import_argv(reference_ckpt, target)) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and "Traceback" not in err
    assert tree(tmp_path) == before  # no target.txt/, no target.txt.old: nothing moved


@pytest.mark.parametrize("flag, value, words", [
    ("--guidance", "nan", "finite number"),
    ("--guidance", "inf", "finite number"),
    ("--guidance", "-1", "at least 0"),
    ("--temperature", "-1", "greater than 0"),
    ("--temperature", "0", "greater than 0"),
    ("--temperature", "nan", "finite number"),
    ("--attn-temp", "nan", "finite number"),
])
def test_issue20_4_sample_bad_numbers(flag, value, words, tmp_path, capsys):
    tiny(3).save_pretrained(tmp_path / "m")
    before = tree(tmp_path)
    assert main(["sample", str(tmp_path / "m"), "--count", "2", "--sampler", "sequential", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and words in err and "Traceback" not in err
    assert tree(tmp_path) == before  # no sample.png


@pytest.mark.parametrize("label", ["3", "null"])
def test_issue20_5_null_label_samples_unconditionally(label, tmp_path, capsys):
    model = tiny(3)
    with torch.no_grad():  # a model that depends on its label, so that the null class shows
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "g.png"
    assert main(["sample", str(tmp_path / "m"), "--count", "2", "--sampler", "sequential", "--label", label,
                 "--out", str(out)]) == 0
    assert out.is_file()
    from tarflow.viz import save_grid, to_uint8

    x = SequentialSampler(model).sample(2, torch.full((2,), 3), 1.0, generator=torch.Generator().manual_seed(0))
    save_grid(to_uint8(x, 256), tmp_path / "api.png", nrow=3)
    assert out.read_bytes() == (tmp_path / "api.png").read_bytes()  # the Python API's null-class samples


def test_issue20_6_additive_import_prior_is_explicit(tmp_path, capsys):
    state = reference_state(0, False)  # additive (nvp=False): a learned prior variance `var`
    ckpt = tmp_path / "ref.pth"
    torch.save(state, ckpt)
    x = torch.rand(3, C, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    standard, learned = ref_log_prob(state, x, None), ref_log_prob(state, x, None, learned_prior=True)
    assert (standard - learned).abs().min() > 0.1  # the two definitions differ
    argv = ["import-reference", str(ckpt), "--image-size", str(SIZE), "--patch-size", str(P), "--channels", str(C),
            "--head-dim", str(HD)]
    assert main([*argv, "--out", str(tmp_path / "std")]) == 0  # default: the reference's N(0, I)
    assert main([*argv, "--out", str(tmp_path / "var"), "--prior", "learned"]) == 0
    for name, expected in (("std", standard), ("var", learned)):
        model = TarFlow.from_pretrained(tmp_path / name).double()
        assert json.loads((tmp_path / name / "config.json").read_text())["model"]["likelihood_prior"] == \
            ("standard" if name == "std" else "learned")
        with torch.no_grad():
            assert (model.log_prob(x) - expected).abs().max() < 1e-4
    model = convert_reference_state(state, P, C, head_dim=HD)
    model.set_likelihood_prior("learned")  # both figures from one model in Python
    with torch.no_grad():
        assert (model.log_prob(x) - learned).abs().max() < 1e-9


def test_issue20_7_image_size_is_checked(tmp_path, reference_ckpt, capsys):
    # The checkpoint's tokens have 8 values: patch 2 x 2 channels, or patch 1 x 8 channels.
    out = tmp_path / "m"
    wrong = ["import-reference", str(reference_ckpt), "--patch-size", "1", "--channels", "8", "--head-dim", str(HD),
             "--out", str(out)]
    assert main(wrong) == 2  # without --image-size: asked for
    assert "--image-size" in capsys.readouterr().err
    assert main([*wrong, "--image-size", str(SIZE)]) == 2
    err = capsys.readouterr().err
    assert "2x2 images, not --image-size 4" in err and "Traceback" not in err
    assert not out.exists()
    assert main(import_argv(reference_ckpt, out)) == 0
    assert TarFlow.from_pretrained(out).config.image_size == SIZE
