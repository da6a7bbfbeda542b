"""Out-of-distribution scoring: AUROC against hand-computed cases, per-image bits/dim against the model's own
log-density, and `tarflow score` (CSV contents, --ood, errors)."""

import csv
import json
import math

import pytest
import torch

from tarflow import FlowConfig, TarFlow
from tarflow.cli import main
from tarflow.data import dequantize, load_dataset
from tarflow.metrics import auroc, bits_per_dim, evaluate_bpd, score_bpd, typicality_auroc


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


# ----- AUROC ----------------------------------------------------------------------------------------
def test_auroc_hand_computed_with_a_tie():
    # pairs (out, in): 2>1 yes, 2=2 half, 2>3 no, 4 beats all three: (1 + 0.5 + 0 + 3) / 6
    assert auroc([1, 2, 3], [2, 4]) == pytest.approx(4.5 / 6)


def test_auroc_extremes_and_chance():
    assert auroc([0.1, 0.2], [0.3, 0.9, 5]) == 1.0
    assert auroc([0.3, 0.9, 5], [0.1, 0.2]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert auroc(x, x) == 0.5  # the same scores on both sides


def test_auroc_matches_pairwise_counting():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 6, (23,), generator=g).double()  # many ties
    b = torch.randint(2, 9, (17,), generator=g).double()
    pairs = (b[:, None] > a[None, :]).double() + 0.5 * (b[:, None] == a[None, :]).double()
    assert auroc(a, b) == pytest.approx(pairs.mean().item(), abs=1e-12)


def test_auroc_refuses_empty_or_nan():
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auroc([1.0, float("nan")], [1.0])


# ----- typicality test -------------------------------------------------------------------------------
def test_typicality_auroc_of_single_images_hand_computed():
    # |bpd - 2|: in [1, 0, 1], out [3, 0]; out 3 beats all three, out 0 ties the 0 and loses to the ones
    assert typicality_auroc([1, 2, 3], [5, 2], entropy=2.0) == pytest.approx(3.5 / 6)


def test_typicality_auroc_groups_are_shuffled_means():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(23, generator=g), torch.randn(31, generator=g) + 0.3
    expected = []
    for scores in (a, b):
        order = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(7))
        groups = scores.numel() // 5
        expected.append((scores[order[:groups * 5]].view(groups, 5).mean(1) - 0.1).abs())
    assert typicality_auroc(a, b, 0.1, group_size=5, seed=7) == pytest.approx(auroc(*expected), abs=1e-12)
    with pytest.raises(ValueError, match="at least 40"):
        typicality_auroc(a, b, 0.1, group_size=40)


def test_typicality_catches_data_that_is_too_likely():
    # the out images get *fewer* bits/dim than the in images (the Fashion-MNIST -> MNIST failure): plain bits/dim
    # ranks them as less anomalous, single images are barely told apart by typicality, groups of 50 are
    g = torch.Generator().manual_seed(3)
    in_bpd, out_bpd = 3 + torch.randn(2000, generator=g), 2.5 + torch.randn(2000, generator=g)
    assert auroc(in_bpd, out_bpd) < 0.4
    assert typicality_auroc(in_bpd, out_bpd, entropy=3.0, group_size=1) < 0.6
    assert typicality_auroc(in_bpd, out_bpd, entropy=3.0, group_size=50) > 0.95


# ----- per-image bits/dim -----------------------------------------------------------------------------
def tiny(num_classes, seed=0):
    torch.manual_seed(seed)
    model = TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, num_classes=num_classes)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def test_unconditional_scores_are_the_model_bits_per_dim():
    model = tiny(0)
    images = torch.randint(0, 17, (7, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    got = score_bpd(model, images, 17, batch_size=4, seed=3)
    # one noise block (7 < 256 images) from the generator of seed 3, draw 0, block start 0, whatever the batch
    x = dequantize(images, 17, generator=torch.Generator().manual_seed(3 * 1_000_003)).double()
    expected = bits_per_dim(model.log_prob(x), 64, 2 / 17)
    assert torch.allclose(got, expected.double(), atol=1e-10)


def test_conditional_scores_are_the_class_mixture():
    model = tiny(3)
    images = torch.randint(0, 17, (9, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(9) % 3
    got = score_bpd(model, images, 17, batch_size=5, draws=2)
    # by hand, per image: logsumexp_k log p(x | y=k) - log K on score_bpd's noise (seed 0: one noise block of
    # 9 images from the generator seeded draw * 7919), in bits/dim with bin width 2/17 over D = 64, averaged
    # over the draws
    expected = torch.zeros(9, dtype=torch.float64)
    for draw in range(2):
        x = dequantize(images, 17, generator=torch.Generator().manual_seed(draw * 7_919)).double()
        each = torch.stack([model.log_prob(x, torch.full((9,), k)) for k in range(3)], dim=1)
        log_p = torch.logsumexp(each, dim=1) - math.log(3)
        expected += (-log_p - 64 * math.log(2 / 17)) / (64 * math.log(2)) / 2
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    ref = evaluate_bpd(model, images, labels, 17, draws=2, batch_size=5, mixture=True)  # same noise scheme
    assert got.mean().item() == pytest.approx(ref["mixture_bits_per_dim"], abs=1e-10)


# ----- tarflow score ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("score") / "model"
    model = tiny(10).float()
    model.save_pretrained(path, metadata={"dataset": "digits", "levels": 17})
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_writes_one_row_per_image(digits_model, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["score", str(digits_model), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_csv(out)
    test = load_dataset("digits", "test")
    assert len(rows) == len(test) == summary["in"]["images"] == 360
    assert list(rows[0]) == ["set", "dataset", "split", "index", "label", "class", "bits_per_dim"]
    assert [int(r["index"]) for r in rows] == list(range(360))
    assert [int(r["label"]) for r in rows] == test.labels.tolist()
    bpd = torch.tensor([float(r["bits_per_dim"]) for r in rows], dtype=torch.float64)
    model = TarFlow.from_pretrained(digits_model)
    expected = score_bpd(model, test.images, 17)
    assert torch.allclose(bpd, expected, atol=1e-5)
    assert summary["in"]["mean_bits_per_dim"] == pytest.approx(expected.mean().item(), abs=1e-9)
    assert "mixture" in summary["score"] and "auroc" not in summary


def test_score_against_the_same_data_gives_chance_auroc(digits_model, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["score", str(digits_model), "--out", str(out), "--ood", "digits", "--count", "50",
                 "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["auroc"] == 0.5  # identical images and noise on both sides
    rows = read_csv(out)
    assert [r["set"] for r in rows] == ["in"] * 50 + ["out"] * 50
    idx = [int(r["index"]) for r in rows[:50]]
    assert idx == sorted(idx) and idx != list(range(50))  # a random subset, not the first images


def test_score_refuses_data_of_other_levels_or_size(tmp_path, capsys):
    path = tmp_path / "m256"
    tiny(10).save_pretrained(path, metadata={"dataset": "digits", "levels": 256})
    assert main(["score", str(path), "--out", str(tmp_path / "x.csv"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "17 pixel levels" in err and "256" in err and not (tmp_path / "x.csv").exists()


def test_score_datasets_from_python_matches_the_cli(digits_model, tmp_path, capsys):
    from tarflow.metrics import score_datasets
    from tarflow.runs import load_model

    out = tmp_path / "scores.csv"
    assert main(["score", str(digits_model), "--out", str(out), "--ood", "digits", "--count", "30",
                 "--device", "cpu", "--no-progress"]) == 0
    cli = json.loads(capsys.readouterr().out)
    model, _ = load_model(digits_model, "cpu")
    result = score_datasets(model, "digits", ood="digits", count=30)
    assert result["auroc"] == cli["auroc"] == 0.5 and result["in"] == cli["in"]
    assert [f"{row['bits_per_dim']:.6f}" for row in result["rows"]] == [row["bits_per_dim"] for row in read_csv(out)]


def test_score_typicality_reference_rows_and_auroc(digits_model, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["score", str(digits_model), "--out", str(out), "--ood", "digits", "--count", "50",
                 "--typicality", "40", "--group-sizes", "1", "5", "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_csv(out)
    reference = [r for r in rows if r["set"] == "reference"]
    assert len(reference) == 40 and {r["split"] for r in reference} == {"train"}
    model = TarFlow.from_pretrained(digits_model)
    train = load_dataset("digits", "train")
    index = [int(r["index"]) for r in reference]
    expected = score_bpd(model, train.images[index], 17)
    assert torch.allclose(torch.tensor([float(r["bits_per_dim"]) for r in reference], dtype=torch.float64),
                          expected, atol=1e-5)
    typicality = summary["typicality"]
    assert typicality["reference"]["images"] == 40
    assert typicality["reference"]["mean_bits_per_dim"] == pytest.approx(expected.mean().item(), abs=1e-9)
    assert typicality["auroc_by_group_size"] == {"1": 0.5, "5": 0.5}  # identical in and out sets


@pytest.mark.parametrize("extra, message", [(["--typicality", "10"], "give the out-of-distribution one"),
                                            (["--typicality", "10", "--ood", "digits", "--split", "train"],
                                             "score the test split")])
def test_score_typicality_refuses_without_ood_or_on_the_train_split(digits_model, tmp_path, capsys, extra, message):
    out = tmp_path / "s.csv"
    assert main(["score", str(digits_model), "--out", str(out), "--device", "cpu", *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()
