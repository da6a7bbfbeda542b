"""Progress output: a bar on a terminal, whole readable lines in a log file (issue 19)."""

import sys

from tarflow.cli import main
from tarflow.progress import LogLines, progress_bar


def test_a_log_gets_one_whole_line_every_n_steps_and_no_carriage_returns(capsys):
    bar = progress_bar(total=100, desc="train", every_steps=10, unit="step")
    assert isinstance(bar, LogLines)  # pytest's captured stderr is not a terminal
    for step in range(100):
        bar.set_postfix(loss=f"{step:.1f}", refresh=False)
        bar.update(1)
        if step == 49:
            bar.write("step 50: a message")
    bar.close()
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert "\r" not in captured.err and len(lines) == 10  # nothing redrawn after the message
    assert lines[0].startswith("train: 10/100 (10%)") and "loss=9.0" in lines[0]
    assert lines[-1].startswith("train: 100/100 (100%)") and captured.out == "step 50: a message\n"


def test_a_time_based_log_line_comes_at_the_end_even_when_not_due(capsys):
    for _ in progress_bar(range(7), desc="eval bits/dim", every_s=3600, leave=False):
        pass
    err = capsys.readouterr().err
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith("eval bits/dim: 7/7 (100%)")]
    assert len(err.splitlines()) == 1 and "\r" not in err


def test_a_terminal_gets_the_usual_bar(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress_bar(total=5, desc="train")
    assert not isinstance(bar, LogLines)
    bar.close()
    assert progress_bar(total=5, enabled=False).disable


def test_train_log_has_a_line_per_log_interval(tmp_path, capsys):
    """`tarflow train > log 2>&1`: 40 steps logged every 10 give four train lines, no carriage returns, and the
    whole log stays short."""
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--log-every", "10",
                 "--eval-every", "20", "--sample-every", "40"]) == 0
    captured = capsys.readouterr()
    log = captured.out + captured.err
    train_lines = [line for line in log.splitlines() if line.startswith("train: ")]
    assert "\r" not in log
    assert [line.split(" (")[0] for line in train_lines] == [f"train: {n}/40" for n in (10, 20, 30, 40)]
    assert all("bpd=" in line and "lr=" in line and "images_per_s=" in line and "ETA" in line for line in train_lines)
    assert len(log.splitlines()) < 15
