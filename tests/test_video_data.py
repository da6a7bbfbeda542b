"""Video data: the Moving MNIST generator (deterministic, bouncing inside the frame, the right MNIST split), GIF
and MP4 round trips, frame strips, folders of video files and of frame folders with labels, and the errors for
clips of the wrong shape, empty folders and undecodable or too-short clips. Tiny clips throughout."""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tarflow.data.video as video_module
import tarflow.video_io as video_io
from data_helpers import trust_files, write_idx
from tarflow.data import BadClipWarning, check_clips, load_video_dataset
from tarflow.data import moving_mnist
from tarflow.errors import ConfigError, DataError, InputError
from tarflow.video_io import read_clip, save_frame_strip, save_gif, save_mp4

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
HAS_FFMPEG = importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None
needs_ffmpeg = pytest.mark.skipif(not HAS_FFMPEG, reason="MP4 needs imageio and imageio-ffmpeg "
                                                         "(pip install 'tarflow[video]')")
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


def fake_mnist(folder: Path, monkeypatch, train_value: int = 100, test_value: int = 200) -> Path:
    """MNIST-named IDX files whose digits are solid 28x28 squares: every train pixel ``train_value`` (labels 3),
    every test pixel ``test_value`` (labels 7), so a clip shows which split it came from and where its digits are."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (np.full((6, 28, 28), train_value), np.full(6, 3), np.full((4, 28, 28), test_value), np.full(4, 7))
    for name, array in zip(IDX_NAMES, arrays):
        write_idx(folder / name, array)
    trust_files(monkeypatch, "mnist", folder)
    return folder


def moving(tmp_path, split="train", **options):
    options.setdefault("clip_count", 5)
    options.setdefault("frame_count", 8)
    return load_video_dataset("moving-mnist", split, cache_dir=tmp_path / "cache", progress=False, **options)


def smooth_clip(frames=8, channels=1, size=32, seed=0) -> np.ndarray:
    """(F, C, H, W) uint8 of a few flat rectangles moving about: compressible, like real video."""
    rng = np.random.default_rng(seed)
    clip = np.zeros((frames, channels, size, size), dtype=np.uint8)
    for _ in range(3):
        top, left, height, width = rng.integers(0, size // 2, 4) + (0, 0, 4, 4)
        colour = rng.integers(60, 256, channels)
        step = rng.integers(-2, 3, 2)
        for t in range(frames):
            row, column = np.clip((top, left) + t * step, 0, size - 1)
            clip[t, :, row:row + height, column:column + width] = colour[:, None, None]
    return clip


# ---------------------------------------------------------------- Moving MNIST

def test_generator_is_deterministic_by_seed_and_prefix_stable():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50)
    first, first_labels = moving_mnist.generate(images, labels, "train", 1003, frame_count=4, image_size=40)
    again, again_labels = moving_mnist.generate(images, labels, "train", 1003, frame_count=4, image_size=40)
    other, _ = moving_mnist.generate(images, labels, "train", 1003, frame_count=4, image_size=40, seed=1)
    assert np.array_equal(first, again) and np.array_equal(first_labels, again_labels)
    assert (first != other).any(axis=(1, 2, 3, 4)).mean() > 0.99
    fewer, fewer_labels = moving_mnist.generate(images, labels, "train", 1001, frame_count=4, image_size=40)
    assert np.array_equal(fewer, first[:1001]) and np.array_equal(fewer_labels, first_labels[:1001])  # crosses a block
    test, _ = moving_mnist.generate(images, labels, "test", 1003, frame_count=4, image_size=40)
    assert (first != test).any(axis=(1, 2, 3, 4)).mean() > 0.99
    assert first.shape == (1003, 4, 1, 40, 40) and first_labels.shape == (1003, 2)
    indices = np.concatenate([moving_mnist.block_draws(0, "train", b, 50, 2)[0] for b in (0, 1)])[:1003]
    assert np.array_equal(first_labels, labels[indices])


def test_trajectories_stay_inside_and_reflect():
    rng = np.random.default_rng(1)
    starts, angles = rng.random((300, 2, 2)), rng.random((300, 2)) * 2 * np.pi
    corners = moving_mnist.trajectories(starts, angles, 40, free_range=36)
    assert corners.min() == 0 and corners.max() == 36  # touches both walls, never beyond
    steps = np.diff(corners, axis=1)
    assert np.abs(steps).max() <= 4  # speed 0.1 x 36 = 3.6 pixels a frame per axis
    # one coordinate by hand: 0.95 moving up at full speed hits 1 after one step, then comes back by 0.1 a step
    single = moving_mnist.trajectories(np.array([[[0.95, 0.5]]]), np.array([[np.pi / 2]]), 3, free_range=100)
    assert single[0, :, 0, 0].tolist() == [100, 90, 80] and single[0, :, 0, 1].tolist() == [50, 50, 50]


def test_moving_mnist_digits_stay_in_frame_and_move(tmp_path, monkeypatch):
    data_dir = fake_mnist(tmp_path / "mnist", monkeypatch)
    one = moving(tmp_path, data_dir=data_dir, digit_count=1)
    clips = one.clips.numpy()
    assert clips.shape == (5, 8, 1, 64, 64) and clips.dtype == np.uint8
    assert ((clips > 0).sum(axis=(2, 3, 4)) == 28 * 28).all()  # the whole solid digit in every frame: never cut off
    assert (np.abs(np.diff(clips.astype(int), axis=1)).sum(axis=(2, 3, 4)) > 0).all()  # every frame moves
    two = moving(tmp_path, data_dir=data_dir)
    assert two.object_labels.shape == (5, 2) and (two.clips.numpy() > 0).sum(axis=(2, 3, 4)).min() >= 28 * 28
    assert (two.levels, two.channels) == (256, 1)
    assert two.num_classes == 55 and two.classes[:2] == ("0 and 0", "0 and 1") and two.classes[-1] == "9 and 9"
    for label, digits in zip(two.labels.tolist(), two.object_labels.tolist()):  # the class is the sorted pair
        assert two.classes[label] == " and ".join(str(digit) for digit in sorted(digits))
    assert one.num_classes == 10 and torch.equal(one.labels, one.object_labels[:, 0])


def test_moving_mnist_uses_the_split_of_the_same_name(tmp_path, monkeypatch):
    data_dir = fake_mnist(tmp_path / "mnist", monkeypatch)
    train, test = moving(tmp_path, "train", data_dir=data_dir), moving(tmp_path, "test", data_dir=data_dir)
    assert set(np.unique(train.clips.numpy())) == {0, 100} and set(np.unique(test.clips.numpy())) == {0, 200}
    assert (train.object_labels == 3).all() and (test.object_labels == 7).all()


def test_moving_mnist_is_cached_under_every_option(tmp_path, monkeypatch):
    data_dir = fake_mnist(tmp_path / "mnist", monkeypatch)
    calls = []
    generate = moving_mnist.generate

    def counted(*args, **kwargs):
        calls.append(args[2:])
        return generate(*args, **kwargs)

    monkeypatch.setattr(video_module.moving_mnist, "generate", counted)
    first = moving(tmp_path, data_dir=data_dir, image_size=48)
    again = moving(tmp_path, data_dir=data_dir, image_size=48)
    assert len(calls) == 1 and len(list((tmp_path / "cache" / "decoded").glob("moving-mnist-train-8x1x48x48-*"))) == 1
    assert torch.equal(first.clips, again.clips) and torch.equal(first.object_labels, again.object_labels)
    for count, changed in enumerate(({"image_size": 40}, {"frame_count": 6}, {"seed": 1}, {"clip_count": 4},
                                     {"digit_count": 1}), start=2):
        moving(tmp_path, data_dir=data_dir, **{"image_size": 48, **changed})
        assert len(calls) == count, changed  # a new option is a new cache entry


def test_moving_mnist_option_errors(tmp_path):
    for options, message in [({"channels": 3}, "grey"), ({"frame_stride": 2}, "frame_stride applies to video-folder"),
                             ({"image_size": 28}, "image_size must be an integer of at least 29"),
                             ({"frame_count": 0}, "frame_count must be"), ({"digit_count": 1.5}, "digit_count"),
                             ({"seed": -1}, "seed must be an integer of at least 0")]:
        with pytest.raises(ConfigError, match=message):
            moving(tmp_path, **options)
    with pytest.raises(ConfigError, match="unknown video dataset 'moving_mnist'"):
        load_video_dataset("moving_mnist")


def test_real_moving_mnist(tmp_path):
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"the MNIST copy {SHARED_MNIST} is absent (it is only on the development machine)")
    test = load_video_dataset("moving-mnist", "test", SHARED_MNIST, tmp_path / "cache", clip_count=3, progress=False)
    assert test.clips.shape == (3, 20, 1, 64, 64) and test.object_labels.shape == (3, 2)
    assert 0 <= int(test.object_labels.min()) and int(test.object_labels.max()) <= 9
    # the generated data is part of every figure measured on it: it must not change silently
    assert hashlib.md5(test.clips.numpy().tobytes()).hexdigest() == "6391ac89653731dfa5ae3425b2b651b2"


# ---------------------------------------------------------------- files: GIF, MP4, frame strips

def test_gif_round_trip_is_exact_for_integer_levels(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 1, 12, 10), dtype=np.uint8)
    grey[3] = grey[2]  # a repeated frame: Pillow stores it once, shown twice as long
    save_gif(torch.from_numpy(grey), tmp_path / "grey.gif")
    assert torch.equal(read_clip(tmp_path / "grey.gif", channels=1), torch.from_numpy(grey))
    palette = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    colour = palette[rng.integers(0, 200, (5, 12, 10))].transpose(0, 3, 1, 2)  # 200 colours: a GIF palette holds them
    save_gif(colour, tmp_path / "colour.gif", fps=20)
    assert np.array_equal(read_clip(tmp_path / "colour.gif").numpy(), colour)
    with Image.open(tmp_path / "colour.gif") as im:
        assert im.n_frames == 5 and im.info["duration"] == 50 and im.info["loop"] == 0


@needs_ffmpeg
def test_mp4_round_trip_within_tolerance(tmp_path):
    """Grey survives H.264 at quality 8 within a few levels; colour loses more at sharp colour edges, where yuv420p
    keeps one colour sample per 2x2 pixels."""
    for channels, mean_error, max_error, least_psnr in ((1, 1.0, 8, 45.0), (3, 6.0, 255, 24.0)):
        clip = smooth_clip(channels=channels, seed=channels)
        save_mp4(clip, tmp_path / f"clip{channels}.mp4")
        back = read_clip(tmp_path / f"clip{channels}.mp4", channels=channels).numpy()
        assert back.shape == clip.shape
        error = back.astype(np.float64) - clip
        psnr = 10 * np.log10(255 ** 2 / (error ** 2).mean())
        assert np.abs(error).mean() < mean_error and np.abs(error).max() <= max_error and psnr > least_psnr, \
            (channels, np.abs(error).mean(), np.abs(error).max(), psnr)
    assert read_clip(tmp_path / "clip3.mp4", max_frames=3).shape == (3, 3, 32, 32)


def test_mp4_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="even width and height, got 31x32"):
        save_mp4(np.zeros((2, 1, 32, 31), np.uint8), tmp_path / "odd.mp4")
    monkeypatch.setattr(video_io.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"tarflow\[video\]"):
        save_mp4(np.zeros((2, 1, 32, 32), np.uint8), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mp4").write_bytes(b"not read")
    with pytest.raises(ConfigError, match=r"reading clip.mp4 needs imageio and imageio-ffmpeg: pip install"):
        folder(tmp_path)  # one error for the missing package, not one bad clip per file


def test_writers_refuse_clips_of_the_wrong_shape(tmp_path):
    for clip, message in [(np.zeros((2, 2, 8, 8), np.uint8), "1 \\(grey\\) or 3 \\(RGB\\) channels, got 2"),
                          (np.zeros((3, 2, 1, 8, 8), np.uint8), "pass one clip at a time"),
                          (np.zeros((2, 1, 8, 8), np.float32), "uint8 levels"),
                          (np.zeros((0, 1, 8, 8), np.uint8), "at least one frame")]:
        with pytest.raises(InputError, match=message):
            save_gif(clip, tmp_path / "x.gif")
    with pytest.raises(ConfigError, match="fps must be positive"):
        save_gif(np.zeros((2, 1, 8, 8), np.uint8), tmp_path / "x.gif", fps=0)
    with pytest.raises(InputError, match="clip\\[None\\]"):
        save_frame_strip(np.zeros((2, 1, 8, 8), np.uint8), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_frame_strip_places_frames_in_rows(tmp_path):
    clips = np.random.default_rng(0).integers(0, 256, (2, 6, 3, 5, 4), dtype=np.uint8)
    save_frame_strip(clips, tmp_path / "strip.png", every=2, scale=1, pad=1)
    strip = np.asarray(Image.open(tmp_path / "strip.png"))
    assert strip.shape == (1 + 2 * 6, 1 + 3 * 5, 3)  # 2 rows of 3 frames (0, 2, 4), 5x4 each, 1 px apart
    for row in range(2):
        for k, frame in enumerate((0, 2, 4)):
            top, left = 1 + row * 6, 1 + k * 5
            assert np.array_equal(strip[top:top + 5, left:left + 4], clips[row, frame].transpose(1, 2, 0))


def test_check_clips_names_what_differs():
    good = torch.zeros(2, 8, 1, 16, 16, dtype=torch.uint8)
    check_clips(good, 8, 1, 16)
    for clips, message in [(torch.zeros(8, 1, 16, 16), "clip\\[None\\]"),
                           (good[:, :5], "5 frames, expected 8: load the data with frame_count=8"),
                           (good.expand(2, 8, 3, 16, 16), "3 channels, expected 1"),
                           (good[..., :12], "12x16 pixels, expected 16x16")]:
        with pytest.raises(InputError, match=message):
            check_clips(clips, 8, 1, 16)


# ---------------------------------------------------------------- video folders

def write_frames(folder: Path, clip: np.ndarray, suffix: str = ".png") -> None:
    """One image per frame, named frame_1 ... frame_F (natural order differs from string order past 9)."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(clip):
        Image.fromarray(frame[0] if frame.shape[0] == 1 else frame.transpose(1, 2, 0)).save(folder / f"frame_{t + 1}"
                                                                                            f"{suffix}")


def folder(tmp_path, split="train", **options):
    options.setdefault("image_size", 16)
    options.setdefault("frame_count", 4)
    return load_video_dataset("video-folder", split, tmp_path / "videos", tmp_path / "cache", progress=False,
                              **options)


def test_frame_folders_load_in_natural_order_with_labels(tmp_path):
    clips = {}
    for split, count in (("train", 2), ("test", 1)):
        for label, name in enumerate(("cat", "dog")):
            for i in range(count):
                clip = smooth_clip(frames=12, channels=3, size=16, seed=10 * label + i + (5 if split == "test" else 0))
                write_frames(tmp_path / "videos" / split / name / f"clip{i}", clip)
                clips[split, name, i] = clip
    train = folder(tmp_path, frame_count=11)
    assert train.clips.shape == (4, 11, 3, 16, 16) and train.classes == ("cat", "dog") and train.num_classes == 2
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(train.clips[2].numpy(), clips["train", "dog", 0][:11])  # frame_10 after frame_9
    strided = folder(tmp_path, "test", frame_count=4, frame_stride=3, channels=1)
    grey = np.asarray(Image.fromarray(clips["test", "cat", 0][3].transpose(1, 2, 0)).convert("L"))
    assert strided.clips.shape == (2, 4, 1, 16, 16) and np.array_equal(strided.clips[0, 1, 0].numpy(), grey)
    resized = folder(tmp_path, image_size=8)
    assert resized.clips.shape == (4, 4, 3, 8, 8)


def test_video_files_load_with_labels(tmp_path):
    clips = []
    for name in ("a", "b"):
        (tmp_path / "videos" / "train" / name).mkdir(parents=True)
        (tmp_path / "videos" / "test" / name).mkdir(parents=True)
        clip = smooth_clip(frames=6, channels=1, size=16, seed=len(clips))
        save_gif(clip, tmp_path / "videos" / "train" / name / "clip.gif")
        save_gif(clip[::-1], tmp_path / "videos" / "test" / name / "clip.gif")
        clips.append(clip)
    if HAS_FFMPEG:
        save_mp4(smooth_clip(frames=6, channels=3, size=16), tmp_path / "videos" / "train" / "b" / "more.mp4")
    train = folder(tmp_path, channels=1, frame_count=5)
    assert train.labels.tolist() == [0, 1] + ([1] if HAS_FFMPEG else []) and train.classes == ("a", "b")
    assert np.array_equal(train.clips[0].numpy(), clips[0][:5]) and np.array_equal(train.clips[1].numpy(), clips[1][:5])
    test = folder(tmp_path, "test", channels=1, frame_count=6)
    assert np.array_equal(test.clips[1].numpy(), clips[1][::-1])


def test_folder_errors(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(DataError, match="no clips in"):
        folder(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        load_video_dataset("video-folder", data_dir=tmp_path / "missing", image_size=8, frame_count=2)
    with pytest.raises(ConfigError, match="needs image_size=N .* and frame_count=F"):
        load_video_dataset("video-folder", data_dir=tmp_path / "videos", image_size=8)
    with pytest.raises(ConfigError, match="needs data_dir"):
        load_video_dataset("video-folder", image_size=8, frame_count=2)
    with pytest.raises(ConfigError, match="seed apply to moving-mnist only"):
        folder(tmp_path, seed=3)
    with pytest.raises(ConfigError, match="on_bad_clip must be"):
        folder(tmp_path, on_bad_clip="ignore")
    write_frames(tmp_path / "videos" / "clip", smooth_clip(frames=2, size=16))
    save_gif(smooth_clip(frames=2, size=16), tmp_path / "videos" / "clip" / "extra.gif")
    with pytest.raises(DataError, match="frame images .* beside 'extra.gif'"):
        folder(tmp_path)


def test_bad_and_short_clips_are_named_or_skipped(tmp_path):
    root = tmp_path / "videos"
    for i in range(12):  # no train/ and test/: 1 in 10 clips, by a hash of the path, is held out for test
        write_frames(root / f"clip{i:02d}", smooth_clip(frames=4, size=16, seed=i))
    (root / "broken.gif").write_bytes(b"GIF89a this is not a picture")
    save_gif(smooth_clip(frames=2, size=16), root / "short.gif")
    with pytest.raises(DataError) as error:
        folder(tmp_path, frame_count=4)
    message = str(error.value)
    assert "broken.gif (cannot decode" in message and "short.gif (2 frames, 4 needed" in message
    assert "on_bad_clip='skip'" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = folder(tmp_path, frame_count=4, on_bad_clip="skip")
    assert any(issubclass(w.category, BadClipWarning) and "skipped 2 of the" in str(w.message) for w in caught)
    test = folder(tmp_path, "test", frame_count=4, on_bad_clip="skip")
    assert (len(train), len(test)) == (9, 3) and train.classes == (".",)  # the held-out clips: 02, 06, 08
