"""Video models from the command line: `tarflow train --preset moving-mnist-tiny` (on fake MNIST digits), `eval`
with bits/dim per frame, `sample` writing a frame strip and a GIF, continuation with `--first-frames` and
`--frames`, and the errors for clips that do not fit the model."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from data_helpers import trust_files, write_idx
from tarflow.cli import main
from tarflow.video_io import read_clip, save_gif

pytestmark = pytest.mark.usefixtures("one_thread")

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """MNIST-named IDX files of random 28x28 'digits' (6 train, 4 test), trusted by md5, and a private cache."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10, rng.integers(0, 256, (4, 28, 28)), np.arange(4))
    for name, array in zip(IDX_NAMES, arrays):
        write_idx(folder / name, array)
    with pytest.MonkeyPatch.context() as patch:
        trust_files(patch, "mnist", folder)
        patch.setenv("TARFLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield folder


@pytest.fixture(scope="module")
def run_dir(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("video") / "run"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(run),
                 "--steps", "3", "--clip-count", "6", "--no-progress"]) == 0
    return run


def test_training_writes_clips_and_eval_gives_bits_per_frame(run_dir, mnist_dir, capsys):
    assert read_clip(run_dir / "samples.gif", channels=1).shape == (4, 1, 32, 32)
    assert (run_dir / "samples.png").is_file()
    trained = json.loads((run_dir / "eval.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--data-dir", str(mnist_dir), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clips"] == 6 and len(result["bits_per_dim_per_frame"]) == 4
    assert abs(result["bits_per_dim"] - trained["bits_per_dim"]) <= 1e-9  # the same test clips as training's eval
    assert abs(np.mean(result["bits_per_dim_per_frame"]) - result["bits_per_dim"]) <= 1e-5
    assert trained["bits_per_dim_per_frame"] == result["bits_per_dim_per_frame"]  # the trainer writes them too


def test_sample_continues_the_first_frames_of_a_clip(run_dir, tmp_path):
    generated = torch.randint(0, 256, (2, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    save_gif(generated, tmp_path / "given.gif")
    out = tmp_path / "continued.png"
    assert main(["sample", str(run_dir), "--count", "2", "--first-frames", str(tmp_path / "given.gif"),
                 "--sampler", "video-jacobi", "--out", str(out)]) == 0
    clip = read_clip(out.with_suffix(".gif"), channels=1)
    assert clip.shape == (4, 1, 32, 32)
    assert torch.equal(clip[:2], generated)
    assert main(["sample", str(run_dir), "--count", "1", "--first-frames", str(tmp_path / "given.gif"),
                 "--frames", "7", "--sampler", "sequential", "--out", str(out)]) == 0
    clip = read_clip(out.with_suffix(".gif"), channels=1)
    assert clip.shape == (7, 1, 32, 32) and torch.equal(clip[:2], generated)


def test_every_clip_as_a_gif_and_an_mp4(run_dir, tmp_path, capsys):
    out, folder = tmp_path / "strip.png", tmp_path / "clips"
    assert main(["sample", str(run_dir), "--count", "2", "--sampler", "sequential", "--out", str(out),
                 "--clips-dir", str(folder)]) == 0
    assert "each clip also as GIF and MP4" in capsys.readouterr().out
    assert sorted(path.name for path in folder.iterdir()) == ["clip_000.gif", "clip_000.mp4", "clip_001.gif",
                                                               "clip_001.mp4"]
    assert torch.equal(read_clip(folder / "clip_000.gif", channels=1), read_clip(out.with_suffix(".gif"), channels=1))
    assert read_clip(folder / "clip_001.mp4", channels=1).shape == (4, 1, 32, 32)
    assert main(["sample", str(run_dir), "--count", "1", "--sampler", "sequential", "--out", str(out),
                 "--clips-dir", str(tmp_path / "gifs"), "--clip-format", "gif"]) == 0
    assert [path.name for path in (tmp_path / "gifs").iterdir()] == ["clip_000.gif"]
    assert main(["sample", str(run_dir), "--out", str(out), "--clips-dir", str(folder), "--clip-format", "avi"]) != 0
    assert "--clip-format takes gif, mp4 or gif,mp4" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--out", str(out), "--clips-dir", str(out)]) != 0
    assert "is a file: give a folder" in capsys.readouterr().err


@pytest.mark.parametrize("frames, size, colour, message", [
    (4, 32, False, "it has 4 frames but the model makes clips of 4"),
    (2, 16, False, "its frames are 16x16 pixels but the model's are 32x32"),
    (2, 32, True, "its frames are colour but the model makes 1-channel clips"),
])
def test_first_frames_that_do_not_fit_are_refused(run_dir, tmp_path, capsys, frames, size, colour, message):
    clip = torch.randint(0, 256, (frames, 3 if colour else 1, size, size), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)
    save_gif(clip, tmp_path / "bad.gif")
    assert main(["sample", str(run_dir), "--first-frames", str(tmp_path / "bad.gif"), "--out",
                 str(tmp_path / "x.png")]) != 0
    assert message in capsys.readouterr().err


def test_temporal_consistency_reports_samples_and_real_clips(run_dir, mnist_dir, capsys):
    capsys.readouterr()
    assert main(["temporal-consistency", str(run_dir), "--data-dir", str(mnist_dir), "--count", "2",
                 "--classifier-steps", "2", "--sampler", "video-jacobi", "--temperature", "0.7",
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 2 and result["test_clips"] == 6 and result["digits_per_clip"] == 2
    assert result["temperature"] == 0.7 and result["denoising"] == "off"
    assert main(["temporal-consistency", str(run_dir), "--data-dir", str(mnist_dir), "--count", "2",
                 "--classifier-steps", "2", "--sampler", "video-jacobi", "--temperature", "0.7",
                 "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert not result["classifier_cached"] and again["classifier_cached"]  # trained once, then loaded from the cache
    assert again["classifier_frame_accuracy"] == result["classifier_frame_accuracy"]
    for key in ("consistent_samples", "consistent_real_test", "consistent_unrelated_real", "classifier_frame_accuracy"):
        assert 0 <= result[key] <= 1


def test_flow_score_denoiser_from_the_command_line(run_dir, mnist_dir, tmp_path, capsys):
    noisy_run = tmp_path / "noisy"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(noisy_run),
                 "--steps", "2", "--clip-count", "6", "--noise", "gaussian", "--noise-std", "0.1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["fit-score-denoiser", str(noisy_run), "--data-dir", str(mnist_dir), "--steps", "3", "--width", "16",
                 "--layers", "1"]) == 0
    fitted, progress = capsys.readouterr()
    fitted = json.loads(fitted)
    assert "flow-score matching: 3/3" in progress  # a progress line (a bar on a terminal)
    assert fitted["out"] == str(noisy_run / "model" / "score_denoiser")
    out = tmp_path / "denoised.png"
    assert main(["sample", str(noisy_run), "--count", "2", "--sampler", "sequential", "--score-denoiser",
                 fitted["out"], "--out", str(out)]) == 0
    assert read_clip(out.with_suffix(".gif"), channels=1).shape == (4, 1, 32, 32)
    consistency = ["temporal-consistency", str(noisy_run), "--data-dir", str(mnist_dir), "--count", "2",
                   "--classifier-steps", "2", "--sampler", "sequential", "--no-progress"]
    capsys.readouterr()
    assert main(consistency) == 0
    tweedie = json.loads(capsys.readouterr().out)
    assert tweedie["denoising"] == "on (sigma=0.1)"
    assert tweedie["denoising_error"].keys() == {"noisy", "tweedie", "clips", "sigma", "unit"}
    assert main(consistency + ["--score-denoiser", fitted["out"]]) == 0
    fsm = json.loads(capsys.readouterr().out)
    assert fsm["denoising"] == f"score denoiser {fitted['out']}"
    assert fsm["denoising_error"]["noisy"] == tweedie["denoising_error"]["noisy"]  # the same noisy test clips
    assert fsm["denoising_error"]["tweedie"] == tweedie["denoising_error"]["tweedie"]
    assert fsm["denoising_error"]["score_denoiser"] >= 0
    for denoising in ([], ["--score-denoiser", fitted["out"]]):  # continued from noised frames, then denoised
        assert main(consistency + ["--continue-from", "2"] + denoising) == 0
        continuation = json.loads(capsys.readouterr().out)["continuation"]
        assert continuation["given_frames"] == 2 and 0 <= continuation["mse"] <= 1
    generated = torch.randint(0, 256, (2, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    save_gif(generated, tmp_path / "given.gif")
    for denoising in ([], ["--score-denoiser", fitted["out"]]):
        assert main(["sample", str(noisy_run), "--count", "1", "--first-frames", str(tmp_path / "given.gif"),
                     "--frames", "6", "--sampler", "sequential", "--out", str(out)] + denoising) == 0
        clip = read_clip(out.with_suffix(".gif"), channels=1)
        assert clip.shape == (6, 1, 32, 32) and torch.equal(clip[:2], generated)  # shown as given
    assert main(consistency + ["--denoise", "none", "--score-denoiser", fitted["out"]]) != 0
    assert "this one was not (or --denoise none was given)" in capsys.readouterr().err
    assert main(["fit-score-denoiser", str(run_dir), "--steps", "1", "--no-progress"]) != 0
    assert "needs a model trained with gaussian noise" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--score-denoiser", fitted["out"], "--out", str(out)]) != 0
    assert "model trained with gaussian noise" in capsys.readouterr().err


def test_flow_score_denoiser_of_a_class_conditional_run(mnist_dir, tmp_path, capsys):
    """Fitted on the flow's score given each training clip's class, then used by guided temporal-consistency."""
    run = tmp_path / "conditional-noisy"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(run),
                 "--steps", "1", "--clip-count", "6", "--noise", "gaussian", "--noise-std", "0.1", "--num-classes",
                 "55", "--sample-guidance", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["fit-score-denoiser", str(run), "--data-dir", str(mnist_dir), "--steps", "2", "--width", "16",
                 "--layers", "1", "--no-progress"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert main(["temporal-consistency", str(run), "--data-dir", str(mnist_dir), "--count", "2", "--classifier-steps",
                 "2", "--sampler", "sequential", "--score-denoiser", fitted["out"], "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["guidance"] == "w=2 (tarflow)" and result["denoising_error"]["score_denoiser"] >= 0
    # eval leaves out the class mixture of a video model (56 passes per batch here) unless asked
    assert main(["eval", str(run), "--data-dir", str(mnist_dir), "--no-progress"]) == 0
    said = capsys.readouterr()
    assert "mixture_bits_per_dim" not in json.loads(said.out) and "--mixture computes it" in said.err
    assert main(["eval", str(run), "--data-dir", str(mnist_dir), "--no-progress", "--mixture"]) == 0
    said = capsys.readouterr()
    assert "mixture_bits_per_dim" in json.loads(said.out) and "56 passes of the model per batch" in said.err


def test_video_options_on_an_image_model_are_refused(tmp_path, capsys):
    run = tmp_path / "tiny"
    assert main(["train", "--preset", "tiny", "--steps", "1", "--eval-every", "0", "--sample-every", "0",
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["sample", str(run), "--frames", "3", "--sampler", "sequential", "--out", str(tmp_path / "a.png")]) != 0
    assert "apply to video models" in capsys.readouterr().err
    assert main(["sample", str(run), "--sampler", "video-jacobi", "--out", str(tmp_path / "a.png")]) != 0
    assert "needs a video model" in capsys.readouterr().err
    assert main(["sample", str(run), "--first-frame-temperature", "0.5", "--out", str(tmp_path / "a.png")]) != 0
    assert "apply to video models" in capsys.readouterr().err
    assert main(["temporal-consistency", str(run)]) != 0
    assert "needs a video model trained on moving-mnist" in capsys.readouterr().err


# ----- frames through an autoencoder (STARFlow-V's latent space) -----------------------------------

@pytest.fixture(scope="module")
def latent_run(mnist_dir, tmp_path_factory):
    """moving-mnist-tiny on the 4x16x16 latents of a tiny random autoencoder (32x32 grey frames, downsample x2)."""
    from conftest import save_tiny_autoencoder

    folder = tmp_path_factory.mktemp("latent-video")
    save_tiny_autoencoder(folder / "autoencoder")
    run = folder / "run"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(run),
                 "--steps", "2", "--clip-count", "6", "--autoencoder", str(folder / "autoencoder"),
                 "--image-size", "16", "--channels", "4", "--patch-size", "4", "--noise", "gaussian",
                 "--noise-std", "0.3", "--no-progress"]) == 0
    return run


def test_latent_frames_train_eval_and_sample_as_images(latent_run, mnist_dir, tmp_path, capsys):
    trained = json.loads((latent_run / "eval.json").read_text())
    assert "latent_nats_per_dim" in trained and "bits_per_dim" not in trained
    assert read_clip(latent_run / "samples.gif", channels=1).shape == (4, 1, 32, 32)  # decoded frames
    capsys.readouterr()
    assert main(["eval", str(latent_run), "--data-dir", str(mnist_dir), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clips"] == 6 and result["latent_dims"] == 4 * 4 * 16 * 16
    assert abs(result["latent_nats_per_dim"] - trained["latent_nats_per_dim"]) <= 1e-9  # the trainer's figure
    assert abs(np.mean(result["latent_nats_per_dim_per_frame"]) - result["latent_nats_per_dim"]) <= 1e-5
    assert trained["latent_nats_per_dim_per_frame"] == result["latent_nats_per_dim_per_frame"]
    out = tmp_path / "drawn.png"
    assert main(["sample", str(latent_run), "--count", "2", "--sampler", "video-jacobi", "--out", str(out)]) == 0
    assert read_clip(out.with_suffix(".gif"), channels=1).shape == (4, 1, 32, 32)
    assert "denoise on (sigma=0.3)" in capsys.readouterr().out


def test_latent_frames_continue_from_given_frames(latent_run, tmp_path, capsys):
    generated = torch.randint(0, 256, (2, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    save_gif(generated, tmp_path / "given.gif")
    out = tmp_path / "continued.png"
    assert main(["sample", str(latent_run), "--count", "1", "--first-frames", str(tmp_path / "given.gif"),
                 "--frames", "6", "--denoise", "none", "--sampler", "sequential", "--out", str(out)]) == 0
    clip = read_clip(out.with_suffix(".gif"), channels=1)
    assert clip.shape == (6, 1, 32, 32) and torch.equal(clip[:2], generated)
    save_gif(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), tmp_path / "small.gif")
    assert main(["sample", str(latent_run), "--first-frames", str(tmp_path / "small.gif"), "--denoise", "none",
                 "--out", str(out)]) != 0
    assert "its frames are 16x16 pixels but the model's are 32x32" in capsys.readouterr().err


def test_latent_frames_score_denoiser_and_temporal_consistency(latent_run, mnist_dir, capsys):
    capsys.readouterr()
    assert main(["fit-score-denoiser", str(latent_run), "--data-dir", str(mnist_dir), "--steps", "2", "--width",
                 "16", "--layers", "1", "--no-progress"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    out = latent_run / "denoised.png"
    assert main(["sample", str(latent_run), "--count", "2", "--sampler", "sequential", "--score-denoiser",
                 fitted["out"], "--out", str(out)]) == 0
    assert read_clip(out.with_suffix(".gif"), channels=1).shape == (4, 1, 32, 32)
    capsys.readouterr()
    assert main(["temporal-consistency", str(latent_run), "--data-dir", str(mnist_dir), "--count", "2",
                 "--classifier-steps", "2", "--sampler", "sequential", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 2 and 0 <= result["consistent_samples"] <= 1  # decoded frames were classified


# ----- text-to-video: captions of the digit pair as a prefix of the deep block ---------------------------

def test_text_to_video_from_prompts_and_its_digit_matching(mnist_dir, tmp_path, capsys):
    run = tmp_path / "captioned"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(run),
                 "--steps", "2", "--clip-count", "6", "--text-encoder", "learned", "--captions", "moving-digits",
                 "--num-classes", "55", "--caption-length", "6", "--text-layers", "1", "--no-progress"]) == 0
    out = tmp_path / "prompted.png"
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "the digits 3 and 7 bouncing", "--prompt", "two and five",
                 "--count", "2", "--sampler", "sequential", "--out", str(out)]) == 0
    assert read_clip(out.with_suffix(".gif"), channels=1).shape == (4, 1, 32, 32)
    assert main(["temporal-consistency", str(run), "--data-dir", str(mnist_dir), "--count", "3",
                 "--classifier-steps", "2", "--sampler", "sequential", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the sample's line
    assert 0 <= result["matching_first_frame"] <= 1 and 0 <= result["matching_last_frame"] <= 1
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "b"),
                 "--steps", "1", "--clip-count", "6", "--text-encoder", "learned", "--captions", "moving-digits",
                 "--no-progress"]) != 0
    assert "captions 55 classes: set num_classes=55" in capsys.readouterr().err


def test_temporal_consistency_samples_with_the_stored_guidance(mnist_dir, tmp_path, capsys, monkeypatch):
    """A class-conditional run's guidance (--sample-guidance, stored with the model) reaches the samples and the
    continuations; --guidance overrides it; an unconditional model refuses a weight."""
    from tarflow.sampling.video import VideoJacobiSampler

    run = tmp_path / "conditional"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(run),
                 "--steps", "2", "--clip-count", "6", "--num-classes", "55", "--sample-guidance", "2",
                 "--sample-guidance-rule", "starflow", "--no-progress"]) == 0
    weights = []
    sample = VideoJacobiSampler.sample

    def recorded(*args, **kwargs):
        guidance = inspect.signature(sample).bind(*args, **kwargs).arguments.get("guidance")
        weights.append(guidance and guidance.weight)
        return sample(*args, **kwargs)

    monkeypatch.setattr(VideoJacobiSampler, "sample", recorded)
    consistency = ["temporal-consistency", str(run), "--data-dir", str(mnist_dir), "--count", "2",
                   "--classifier-steps", "2", "--sampler", "video-jacobi", "--continue-from", "2", "--no-progress"]
    capsys.readouterr()
    assert main(consistency) == 0
    assert json.loads(capsys.readouterr().out)["guidance"] == "w=2 (starflow)" and set(weights) == {2.0}
    assert main(consistency + ["--guidance", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["guidance"] == "none" and weights[-1] is None
    assert main(consistency[:2] + ["--data-dir", str(mnist_dir), "--classifier-steps", "2", "--guidance", "1"]) == 0
    unconditional = tmp_path / "unconditional"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(unconditional),
                 "--steps", "1", "--clip-count", "6", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["temporal-consistency", str(unconditional), "--data-dir", str(mnist_dir), "--classifier-steps",
                 "2", "--guidance", "1", "--no-progress"]) != 0
    assert "--guidance needs a class-conditional model" in capsys.readouterr().err


def test_a_cooler_first_frame_is_stored_with_the_model_and_reaches_the_samples(mnist_dir, tmp_path, capsys,
                                                                               monkeypatch):
    """--sample-first-frame-temperature is stored with the model; `sample` and `temporal-consistency` draw the
    first frame's noise at it and the later frames' at the temperature; --first-frame-temperature overrides."""
    from tarflow.sampling.video import VideoJacobiSampler

    run = tmp_path / "cool-first-frame"
    assert main(["train", "--preset", "moving-mnist-tiny", "--data-dir", str(mnist_dir), "--out", str(run),
                 "--steps", "1", "--clip-count", "6", "--sample-temperature", "1", "--sample-first-frame-temperature",
                 "0.5", "--no-progress"]) == 0
    stored = json.loads((run / "model" / "config.json").read_text())["metadata"]["sampling"]
    assert stored == {"temperature": 1.0, "first_frame_temperature": 0.5}
    temperatures = []
    sample = VideoJacobiSampler.sample

    def recorded(*args, **kwargs):
        temperatures.append(inspect.signature(sample).bind(*args, **kwargs).arguments["temperature"])
        return sample(*args, **kwargs)

    monkeypatch.setattr(VideoJacobiSampler, "sample", recorded)
    tokens_per_frame = (32 // 8) ** 2
    capsys.readouterr()
    out = str(tmp_path / "a.png")
    assert main(["sample", str(run), "--count", "2", "--sampler", "video-jacobi", "--out", out]) == 0
    assert "temperature 1 (first frame 0.5)" in capsys.readouterr().out
    assert temperatures[-1][:tokens_per_frame].unique().tolist() == [0.5]
    assert temperatures[-1][tokens_per_frame:].unique().tolist() == [1.0]
    assert main(["temporal-consistency", str(run), "--data-dir", str(mnist_dir), "--count", "2", "--classifier-steps",
                 "2", "--sampler", "video-jacobi", "--first-frame-temperature", "0.25", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["first_frame_temperature"] == 0.25 and result["temperature"] == 1.0
    assert temperatures[-1][:tokens_per_frame].unique().tolist() == [0.25]
    assert main(["train", "--preset", "tiny", "--sample-first-frame-temperature", "0.5", "--out",
                 str(tmp_path / "image"), "--no-progress"]) != 0
    assert "sample_first_frame_temperature sets a clip's first frame apart" in capsys.readouterr().err


def test_continuation_from_real_test_frames(run_dir, mnist_dir, capsys):
    capsys.readouterr()
    assert main(["temporal-consistency", str(run_dir), "--data-dir", str(mnist_dir), "--count", "2",
                 "--classifier-steps", "2", "--sampler", "sequential", "--continue-from", "3", "--no-progress"]) == 0
    continuation = json.loads(capsys.readouterr().out)["continuation"]
    assert (continuation["given_frames"], continuation["continued_frames"], continuation["clips"]) == (3, 3, 2)
    assert len(continuation["mse_per_frame"]) == 3 and 0 <= continuation["mse"] <= 1
    assert abs(np.mean(continuation["mse_per_frame"]) - continuation["mse"]) <= 1e-6
    assert 0 < continuation["mse_repeating_last_given_frame"] <= 1  # the digits move
    assert 0 <= continuation["last_frame_shows_the_digits"] <= 1


def test_continuation_error_against_the_trivial_prediction():
    from tarflow.metrics.temporal import continuation_error

    real = torch.zeros(1, 4, 1, 2, 2, dtype=torch.uint8)
    real[:, 3] = 255  # the last frame lights up
    continued = real.clone()
    continued[:, 2] = 255  # one wrong frame of two
    result = continuation_error(continued, real, given=2)
    assert result["mse_per_frame"] == [1.0, 0.0] and result["mse"] == 0.5
    assert result["mse_repeating_last_given_frame"] == 0.5


def test_reverse_time_plays_some_training_clips_backwards_and_is_for_video_models(capsys):
    """The same step's batch with and without reverse_time: each clip as it was or frame for frame backwards, the
    noise unchanged (drawn before the coins), so runs without the option keep their batches."""
    from tarflow.presets import PRESETS
    from tarflow.train.config import RunConfig
    from tarflow.train.trainer import batch
    from tarflow.train.video import ClipData

    clips = torch.randint(0, 256, (32, 4, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ClipData("clips", "train", clips, torch.zeros(32, dtype=torch.int64), 256, 0)
    config = RunConfig.from_dict(PRESETS["moving-mnist-tiny"])
    forward, _ = batch(data, 5, config.train, config.model, torch.device("cpu"))
    config.train.reverse_time = True
    mixed, _ = batch(data, 5, config.train, config.model, torch.device("cpu"))
    backwards = torch.tensor([torch.equal(mixed[i], forward[i].flip(0)) for i in range(len(mixed))])
    kept = torch.tensor([torch.equal(mixed[i], forward[i]) for i in range(len(mixed))])
    assert (backwards ^ kept).all() and 0 < backwards.sum() < len(mixed)
    assert main(["train", "--preset", "tiny", "--reverse-time", "true", "--no-progress"]) == 2
    assert "reverse_time plays training clips backwards: it needs a video model" in capsys.readouterr().err
