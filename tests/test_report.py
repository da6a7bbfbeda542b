"""The run report (RUN/report.html): written by the trainer and by `tarflow report`, self-contained, and with
commands that really reproduce the run; rendered in headless Chromium with every image loaded."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import subprocess

import pytest

from tarflow.cli import build_parser, config_from_args, main
from tarflow.presets import get_preset
from tarflow.report import REPORT_FILE, read_run, write_report
from tarflow.report.contents import fid_command, find_samples, train_command
from tarflow.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE_SOURCE = re.compile(r'<img src="data:(image/[a-z]+);base64,([^"]+)"')


def tiny(**train_overrides):
    config = get_preset("tiny")
    for name, value in {"steps": 20, "eval_every": 10, "sample_every": 10, "checkpoint_every": 10,
                        "entropy_every": 10, **train_overrides}.items():
        setattr(config.train, name, value)
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    train(tiny(), run_dir, progress=False)
    return run_dir


def embedded(page: str) -> list[tuple[str, bytes]]:
    return [(mime, base64.b64decode(data)) for mime, data in IMAGE_SOURCE.findall(page)]


def test_the_trainer_writes_a_self_contained_page(run):
    page = (run / REPORT_FILE).read_text()
    images = embedded(page)
    grids = [run / "samples" / "step_000010.png", run / "samples" / "step_000020.png", run / "samples.png"]
    for grid in grids:  # every sample grid, byte for byte
        assert ("image/png", grid.read_bytes()) in images, grid
    assert len(images) == len(grids) + 3  # bits/dim, lr and gradient norm, attention entropy
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for _, data in images)
    assert not re.search(r'(src|href)="(?!data:)', page), "the page refers to a file or the network"
    evaluation = json.loads((run / "eval.json").read_text())
    assert f"{evaluation['bits_per_dim']:.4f} ± {evaluation['stderr']:.4f}" in page
    assert "finished: 20 steps" in page


def test_the_page_is_refreshed_at_each_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(), run_dir, progress=False, stop_at=10)  # stopped after the step-10 evaluation and checkpoint
    page = (run_dir / REPORT_FILE).read_text()
    record = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if "test_bpd" in json.loads(line))
    assert f"{record['test_bpd']:.4f} at step 10" in page
    assert "stopped at step 10 of 20" in page
    assert ("image/png", (run_dir / "samples" / "step_000010.png").read_bytes()) in embedded(page)


def test_the_train_command_rebuilds_the_config(run, tmp_path):
    config = read_run(run).config
    config["train"]["data_dir"] = "some dir"  # a value that needs quoting
    config["model"]["layers_per_block"] = [1, 2]
    words = train_command(config, run)
    args = build_parser().parse_args(shlex.split(words)[1:])
    assert config_from_args(args).to_dict() == config
    assert args.out == str(run)


def test_the_fid_command_repeats_the_saved_result(run):
    result = {"fid": 12.5, "samples": 500, "reference": {"dataset": "digits", "split": "test", "images": 360},
              "guidance": 1.5, "guidance_rule": "starflow", "temperature": 0.9, "seed": 3,
              "extractor": {"file": "/weights/inception.pt", "sha256": "x"}}
    args = build_parser().parse_args(shlex.split(fid_command(result, run))[1:])
    assert (args.path, args.weights, args.count, args.split, args.ref_count) == (str(run), "/weights/inception.pt",
                                                                                 500, "test", 360)
    assert (args.guidance, args.guidance_rule, args.temperature, args.seed) == (1.5, "starflow", 0.9, 3)


def test_tarflow_report_shows_saved_fid_results_and_touches_nothing_else(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = {"fid": 123.456, "samples": 100, "reference": {"split": "test", "images": 360}, "seed": 0,
              "sampler": "<b>sequential</b>"}
    (copy / "fid.json").write_text(json.dumps(result))
    before = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file() and path.name != REPORT_FILE}
    assert main(["report", str(copy)]) == 0
    assert str(copy / REPORT_FILE) in capsys.readouterr().out
    after = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file() and path.name != REPORT_FILE}
    assert after == before
    page = (copy / REPORT_FILE).read_text()
    assert "123.456" in page and "--count 100 --split test --ref-count 360" in page
    assert "&lt;b&gt;sequential" in page and "<b>" not in page  # text from files is escaped


@pytest.mark.parametrize("setup", ["missing", "foreign", "model"])
def test_tarflow_report_refuses_what_is_not_a_run(run, tmp_path, setup, capsys):
    path = {"missing": tmp_path / "missing", "foreign": tmp_path, "model": run / "model"}[setup]
    assert main(["report", str(path)]) == 2
    assert "is not a training run directory" in capsys.readouterr().err
    assert not (path / REPORT_FILE).exists()


def test_a_damaged_metric_line_is_left_out(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with open(copy / "metrics.jsonl", "a") as log:
        log.write('{"step": 21, "bpd": 3.')  # cut short by a crash
    assert read_run(copy).records == read_run(run).records
    write_report(copy)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Appended to a copy of the page: after every image has loaded or failed, one element says how many of each.
IMAGE_CHECK = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const loaded = images.filter(image => image.complete && image.naturalWidth > 0).length;
  const marker = document.createElement("p");
  marker.id = "image-check";
  marker.textContent = `images ${images.length} loaded ${loaded}`;
  document.body.appendChild(marker);
});</script>"""


@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_the_page_renders_in_headless_chromium_with_every_image(run, tmp_path):
    page = (run / REPORT_FILE).read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", IMAGE_CHECK + "\n</body>"))
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120).stdout
    count = len(embedded(page))
    assert f'<p id="image-check">images {count} loaded {count}</p>' in dom
    # a broken image is seen as one: the check itself can fail
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("base64,", "base64,AAAA", 1).replace("</body>", IMAGE_CHECK + "\n</body>"))
    dom = subprocess.run(flags + ["--dump-dom", broken.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'<p id="image-check">images {count} loaded {count - 1}</p>' in dom
    screenshot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={screenshot}", "--window-size=1200,2400", (run / REPORT_FILE).as_uri()],
                   capture_output=True, timeout=120)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_long_run_shows_twelve_evenly_spaced_grids_and_the_final_one(tmp_path):
    (tmp_path / "samples").mkdir()
    for step in range(100, 3100, 100):  # 30 grids
        (tmp_path / "samples" / f"step_{step:06d}.png").write_bytes(b"")
    (tmp_path / "samples.png").write_bytes(b"")
    shown = find_samples(tmp_path)
    steps = [sample.step for sample in shown]
    assert len(steps) == 13 and steps[-1] is None
    assert steps[0] == 100 and steps[-2] == 3000 and steps[:-1] == sorted(set(steps[:-1]))
    gaps = [later - earlier for earlier, later in zip(steps[:-2], steps[1:-1])]
    assert max(gaps) - min(gaps) <= 100  # evenly spaced, to one grid
