"""Fault injection: every way a training run can be hurt, and the promise each one keeps.

Crashes (SIGKILL at random steps and at every file operation of a checkpoint save), SIGINT/SIGTERM,
damaged checkpoint files, NaN batches and non-finite losses or gradients, a full, size-limited or
read-only disk, and two trainers on one run directory. Each case asserts that no data is lost (the last
checkpoint is whole and loads), that the run resumes, that a resumed run ends with exactly the weights of
an uninterrupted one, and that the user gets a clear message.

Crashes run in forked child processes (the parent has already imported torch, so a child costs a fraction
of a second) that SIGKILL themselves at a chosen moment; one case kills a real `python -m tarflow train`
subprocess from outside.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tarflow import CheckpointError, TarFlow
from tarflow.cli import main
from tarflow.data.datasets import BadImageWarning
from tarflow.errors import TarflowError
from tarflow.io import OutputError, dir_lock
from tarflow.presets import get_preset
from tarflow.train import checkpoint as ckpt
from tarflow.train import step as step_module
from tarflow.train import trainer
from tarflow.train.faults import TrainingStopped
from tarflow.train.trainer import train

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="crash cases run in forked children (POSIX)")]

STEPS, EVERY = 12, 3
# The run every case trains: the tiny preset, 12 steps, a checkpoint every 3, a metrics line every step.
FLAGS = dict(steps=STEPS, checkpoint_every=EVERY, eval_every=0, sample_every=0, log_every=1, num_samples=10)
CLI_FLAGS = [a for k, v in FLAGS.items() for a in (f"--{k.replace('_', '-')}", str(v))] + ["--no-progress"]


def config(**overrides):
    c = get_preset("tiny")
    for k, v in {**FLAGS, **overrides}.items():
        setattr(c.train, k, v)
    return c


FILES = ("checkpoint/model.safetensors", "checkpoint/ema.safetensors", "model/model.safetensors")


def weights(run: Path, files=FILES) -> dict:
    return {f: load_file(str(run / f)) for f in files}


def assert_same_weights(run: Path, reference: dict, files=FILES) -> None:
    got = weights(run, files)
    for f in files:
        assert got[f].keys() == reference[f].keys()
        for k in got[f]:
            assert torch.equal(got[f][k], reference[f][k]), f"{run}/{f}: {k} differs from the uninterrupted run"


def checkpoint_step(run: Path) -> int | None:
    """The step of the checkpoint a resume would load, after checking that every file of it loads."""
    path = ckpt.find_checkpoint(run)
    if path is None:
        return None
    c = config()
    model = TarFlow(c.model)
    return ckpt.load_checkpoint(path, model, TarFlow(c.model))["step"]


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for d in (run, run / "samples") if d.is_dir() for p in d.iterdir()
                  if p.name.endswith((".tmp", ".old")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The weights of the uninterrupted run, that every interrupted one must end with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(config(), run, progress=False)
    return weights(run)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 6 (checkpoints at 3 and 6): copy it to damage it."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train(config(), run, progress=False, stop_at=6)
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# ----- forked children --------------------------------------------------------------------------------
def forked(fn, *args, timeout: float = 60.0) -> tuple[int, str]:
    """Run fn(*args) in a forked child; return (exit code, or minus the signal that ended it; its output)."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"tarflow-child-{os.getpid()}-{time.monotonic_ns()}.log"
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 70
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1), os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
            torch.set_num_threads(1)
            code = fn(*args) or 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child did not finish in {timeout} s: {out.read_text()}")
        time.sleep(0.01)
    text = out.read_text()
    out.unlink()
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), text


def arm_at(step: int, action) -> None:
    """In a child: call action() during training step ``step`` (1-based), after its optimizer update."""
    update = step_module.update_ema

    def hooked(ema, model, decay, s):
        update(ema, model, decay, s)
        if s + 1 == step:
            action()

    step_module.update_ema = hooked  # train_step (tarflow.train.step) calls it after the optimizer update


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(run: Path, step: int, op: int) -> None:
    """In a child: train, and SIGKILL this process just before the op-th file operation (write, fsync,
    rename, delete) after step ``step``'s update; op 0 kills in the middle of the step itself."""
    count = [0]

    def countdown(fn):
        def wrapped(*a, **k):
            if armed[0]:
                count[0] += 1
                if count[0] >= op:
                    kill_self()
            return fn(*a, **k)
        return wrapped

    armed = [False]

    def arm():
        armed[0] = True
        if op == 0:
            kill_self()

    arm_at(step, arm)
    ckpt.write_bytes = countdown(ckpt.write_bytes)
    os.replace, os.fsync, shutil.rmtree = countdown(os.replace), countdown(os.fsync), countdown(shutil.rmtree)
    train(config(), run, progress=False)


def crash_then_resume(tmp_path: Path, reference: dict, step: int, op: int, left: set[str] | None = None) -> None:
    run = tmp_path / "run"
    code, out = forked(kill_at, run, step, op)
    assert code == -signal.SIGKILL, f"the child was not killed (exit {code}): {out}"
    if left is not None:  # which copies of the checkpoint the kill left
        assert {p.name for p in run.iterdir() if "checkpoint" in p.name and ".tmp" not in p.name} == left
    saved = checkpoint_step(run)  # every file of the surviving checkpoint loads
    last_complete = (step - 1) // EVERY * EVERY  # saves before the kill's step had finished: none may be lost
    assert (saved or 0) >= last_complete and (saved or 0) % EVERY == 0, (saved, step, op)
    train(config(), run, progress=False)  # the same command again
    assert_same_weights(run, reference)
    assert logged_steps(run) == list(range(1, STEPS + 1))  # no metric line lost or written twice
    assert leftovers(run) == []


# 6 seeds: a random step and a random moment (a file operation) after it.
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_a_random_step_then_resume_exactly(seed, tmp_path, reference):
    rng = random.Random(seed)
    crash_then_resume(tmp_path, reference, rng.randint(1, STEPS - 2), rng.randint(0, 20))


# Every file operation of the checkpoint save at step 6, in turn: 1-6 write and fsync the three files in a
# temporary directory, 7-10 fsync them and it, 11 renames checkpoint -> checkpoint.old, 12 the temporary
# directory -> checkpoint, 13 fsyncs the run directory, 14 deletes checkpoint.old.
LEFT = {**{op: {"checkpoint"} for op in range(0, 12)}, 12: {"checkpoint.old"}, 13: {"checkpoint", "checkpoint.old"},
        14: {"checkpoint", "checkpoint.old"}}


@pytest.mark.parametrize("op", range(0, 15))
def test_sigkill_at_each_moment_of_a_checkpoint_save(op, tmp_path, reference):
    crash_then_resume(tmp_path, reference, 6, op, LEFT[op])


def test_sigkill_of_a_real_subprocess_then_rerun_the_same_command(tmp_path, reference):
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--out", str(run), *CLI_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "tarflow", *argv], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    kill_after = random.Random(0).randint(4, 8)  # kill once this step is logged: after the checkpoint of step 3
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(ln)["step"] >= kill_after for ln in metrics.read_text().splitlines()
                                     if ln.endswith("}")):
            child.kill()
            break
        time.sleep(0.002)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    assert checkpoint_step(run) >= 3
    assert main(argv) == 0
    assert_same_weights(run, reference)
    assert logged_steps(run) == list(range(1, STEPS + 1))


def test_a_crash_between_the_two_renames_leaves_the_old_checkpoint(stopped_run, tmp_path, reference):
    run = copy_run(stopped_run, tmp_path)
    os.replace(run / "checkpoint", run / "checkpoint.old")  # as a crash in the middle of a swap leaves it
    assert checkpoint_step(run) == 6
    train(config(), run, progress=False)
    assert_same_weights(run, reference)
    assert leftovers(run) == []


def kill_after_first_delete(run: Path) -> None:
    """In a child: train, and SIGKILL this process right after its first directory delete completes."""
    rmtree = shutil.rmtree

    def rmtree_then_die(*a, **k):
        rmtree(*a, **k)
        kill_self()

    shutil.rmtree = rmtree_then_die
    train(config(), run, progress=False)


def test_a_crash_in_the_save_after_an_interrupted_swap_keeps_a_checkpoint(stopped_run, tmp_path, reference):
    run = copy_run(stopped_run, tmp_path)
    os.replace(run / "checkpoint", run / "checkpoint.old")  # only the .old copy is whole
    code, out = forked(kill_after_first_delete, run)
    assert code == -signal.SIGKILL, out
    assert checkpoint_step(run) in (6, 9)  # the next save must not delete the only whole copy first
    train(config(), run, progress=False)
    assert_same_weights(run, reference)


# ----- SIGINT / SIGTERM --------------------------------------------------------------------------------
def signal_at(run: Path, step: int, signum: int) -> int:
    """In a child: `tarflow train`, with ``signum`` arriving during step ``step``."""
    arm_at(step, lambda: os.kill(os.getpid(), signum))
    return main(["train", "--preset", "tiny", "--out", str(run), *CLI_FLAGS])


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_checkpoint_and_resume_exactly(signum, code, tmp_path, reference):
    run = tmp_path / "run"
    status, out = forked(signal_at, run, 5, signum)
    assert status == code, out
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step 5" in out and f"tarflow train --resume {run}" in out, out
    assert "Traceback" not in out
    assert checkpoint_step(run) == 5  # saved at the end of the step, off the every-3 schedule
    assert logged_steps(run) == [1, 2, 3, 4, 5]
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_weights(run, reference)
    assert logged_steps(run) == list(range(1, STEPS + 1))


# ----- damaged checkpoint files ------------------------------------------------------------------------
def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def empty(f: Path) -> None:
    f.write_bytes(b"")


def bad_header_length(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes((2**40).to_bytes(8, "little") + data[8:])


def bad_header_json(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[8:24] = b"{\x00garbage\xff\xfe\x01[[[[[["
    f.write_bytes(bytes(data))


DAMAGE = [("model.safetensors", truncate), ("ema.safetensors", truncate), ("trainer.pt", truncate),
          ("model.safetensors", empty), ("ema.safetensors", empty), ("trainer.pt", empty),
          ("model.safetensors", bad_header_length), ("model.safetensors", bad_header_json),
          ("ema.safetensors", bad_header_json)]


@pytest.mark.parametrize("name, damage", DAMAGE, ids=[f"{n}-{d.__name__}" for n, d in DAMAGE])
def test_a_damaged_checkpoint_file_is_a_clear_error_and_nothing_is_overwritten(name, damage, stopped_run, tmp_path,
                                                                                capsys):
    run = copy_run(stopped_run, tmp_path)
    damage(run / "checkpoint" / name)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        train(config(), run, progress=False)
    assert str(run / "checkpoint" / name) in str(e.value)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2  # the CLI: a message, no traceback
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # the run did not restart from scratch over the damaged one


def test_a_missing_checkpoint_file_is_a_clear_error(stopped_run, tmp_path):
    run = copy_run(stopped_run, tmp_path)
    (run / "checkpoint" / "trainer.pt").unlink()
    with pytest.raises(CheckpointError, match="trainer.pt is missing"):
        train(config(), run, progress=False)


# ----- numeric faults ----------------------------------------------------------------------------------
def nan_batches(monkeypatch, steps: set[int]) -> None:
    """Put a NaN into the batches of these (1-based) steps."""
    batch = trainer.batch

    def poisoned(data, step, *a):
        x, y = batch(data, step, *a)
        if step + 1 in steps:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        return x, y

    monkeypatch.setattr(trainer, "batch", poisoned)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_batch_skips_the_step_and_is_logged(monkeypatch, tmp_path, stopped_run):
    run = copy_run(stopped_run, tmp_path)  # at step 6
    nan_batches(monkeypatch, {7})
    train(config(), run, progress=False, stop_at=7)
    assert [r for r in metrics(run) if r["step"] == 7][0]["bad_step"] == "the batch holds NaN or inf"
    after, before = weights(run, FILES[:2]), weights(stopped_run, FILES[:2])
    for f in after:  # neither the weights nor the EMA moved
        assert all(torch.equal(after[f][k], before[f][k]) for k in after[f])
    state = torch.load(run / "checkpoint" / "trainer.pt", weights_only=True)
    old = torch.load(stopped_run / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["step"] == 7 and state["scheduler"]["last_epoch"] == 7  # the schedule advances with the step
    for k, v in old["optimizer"]["state"].items():  # no optimizer update
        assert torch.equal(state["optimizer"]["state"][k]["exp_avg"], v["exp_avg"])


def test_a_run_with_a_nan_batch_resumes_exactly(monkeypatch, tmp_path):
    nan_batches(monkeypatch, {5})
    train(config(), tmp_path / "straight", progress=False)
    train(config(), tmp_path / "resumed", progress=False, stop_at=4)
    train(config(), tmp_path / "resumed", progress=False, stop_at=5)
    train(config(), tmp_path / "resumed", progress=False)
    assert_same_weights(tmp_path / "resumed", weights(tmp_path / "straight"))


def test_too_many_bad_steps_in_a_row_stop_the_run_with_the_last_good_state(monkeypatch, tmp_path):
    run = tmp_path / "run"
    train(config(max_bad_steps=3), run, progress=False, stop_at=7)
    good = weights(run, FILES[:2])  # after step 7, the last good one
    nan_batches(monkeypatch, {8, 9, 10, 11, 12})
    with pytest.raises(TrainingStopped) as e:
        train(config(max_bad_steps=3), run, progress=False)
    message = str(e.value)
    for words in ("step 10", "3 steps in a row (8..10)", "metrics.jsonl", "learning rate", "noise", "clip",
                  "NaN or inf values in the training data", str(run / "checkpoint")):
        assert words in message, (words, message)
    assert [r["step"] for r in metrics(run) if "bad_step" in r] == [8, 9, 10]
    state = torch.load(run / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["step"] == 10 and state["bad_steps_in_a_row"] == 3
    assert_same_weights(run, good, FILES[:2])


class InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


@pytest.mark.parametrize("fault", ["nan loss", "inf gradient"])
def test_non_finite_loss_or_gradient_stops_the_cli_with_the_causes(fault, monkeypatch, tmp_path, capsys):
    log_prob = TarFlow.log_prob

    def broken(self, x, y=None, validate=True):
        out = log_prob(self, x, y, validate)
        return out * float("nan") if fault == "nan loss" else InfiniteGradient.apply(out)

    monkeypatch.setattr(TarFlow, "log_prob", broken)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), *CLI_FLAGS, "--max-bad-steps", "2"]) == 2
    err = capsys.readouterr().err
    reason = "the loss is nan" if fault == "nan loss" else "the gradient norm is nan"  # inf * 0 in the clipping
    assert f"training stopped at step 2: 2 steps in a row (1..2) were skipped, the last because {reason}" in err
    assert "learning rate" in err and "Traceback" not in err
    assert checkpoint_step(run) == 2
    assert [r["bad_step"] for r in metrics(run)] == [reason, reason]


# ----- full, size-limited or read-only disk ------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_checkpoint_write_is_a_clear_error_and_the_previous_one_survives(code, monkeypatch, tmp_path,
                                                                                   reference):
    run = tmp_path / "run"
    write = ckpt.write_bytes

    def failing(path, data):
        if len(list(Path(path).parent.iterdir())) == 1:  # the second file of the checkpoint
            raise OSError(code, os.strerror(code))
        write(path, data)

    train(config(), run, progress=False, stop_at=3)
    monkeypatch.setattr(ckpt, "write_bytes", failing)
    with pytest.raises(OutputError) as e:
        train(config(), run, progress=False)
    message = str(e.value)
    assert f"cannot write {run / 'checkpoint'}: {os.strerror(code)} ({errno.errorcode[code]})" in message, message
    assert "intact" in message and "re-run the same command" in message
    assert checkpoint_step(run) == 3 and leftovers(run) == []
    monkeypatch.undo()
    train(config(), run, progress=False)
    assert_same_weights(run, reference)


def limited_file_size(run: Path, limit: int) -> int:
    """In a child: `tarflow train` where no file may grow past ``limit`` bytes (as a full disk would stop it)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return main(["train", "--preset", "tiny", "--out", str(run), *CLI_FLAGS])


def test_a_file_size_limit_is_a_clear_error_and_the_previous_checkpoint_survives(tmp_path, reference):
    run = tmp_path / "run"
    train(config(), run, progress=False, stop_at=3)
    code, out = forked(limited_file_size, run, 20_000)  # the weights file of the next checkpoint is larger
    assert code == 2, out
    assert f"cannot write {run / 'checkpoint'}" in out and "(EFBIG)" in out and "Traceback" not in out, out
    assert checkpoint_step(run) == 3 and leftovers(run) == []
    train(config(), run, progress=False)
    assert_same_weights(run, reference)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_run_directory_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    train(config(), run, progress=False, stop_at=3)
    run.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            train(config(), run, progress=False)
    finally:
        run.chmod(0o755)
    assert checkpoint_step(run) == 3


# ----- two trainers on one run directory ---------------------------------------------------------------
def hold_lock(run: Path, ready: int, release: int) -> None:
    with dir_lock(run, "training process"):
        os.write(ready, b"x")
        os.read(release, 1)


def test_a_second_trainer_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path, capsys):
    run = tmp_path / "run"
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            hold_lock(run, ready_w, release_r)
        finally:
            os._exit(0)
    try:
        os.read(ready_r, 1)
        argv = ["train", "--preset", "tiny", "--out", str(run), *CLI_FLAGS]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by another training process (pid {pid})" in err, err
        assert not (run / "config.json").exists()  # the second trainer touched nothing
    finally:
        os.kill(pid, signal.SIGKILL)  # a holder killed without cleanup
        os.waitpid(pid, 0)
    train(config(steps=3), run, progress=False)  # the lock died with it


def lock_is_free(directory: Path) -> bool:
    """Whether a new `dir_lock` on ``directory`` can be taken now (a new open file, so flock conflicts with
    any holder, in this process or another)."""
    try:
        with dir_lock(directory):
            return True
    except TarflowError:
        return False


def test_dir_lock_refuses_a_second_holder_and_is_released_on_exit(tmp_path):
    run = tmp_path / "run"
    with dir_lock(run, "training process"):
        with pytest.raises(TarflowError, match=rf"in use by another training process \(pid {os.getpid()}\)"):
            with dir_lock(run, "training process"):
                pass
        assert not lock_is_free(run)
    assert lock_is_free(run)  # released when the block ended
    with pytest.raises(RuntimeError, match="boom"):
        with dir_lock(run):
            assert not lock_is_free(run)
            raise RuntimeError("boom")
    assert lock_is_free(run)  # and when it ended by an exception


def test_the_lock_is_per_directory_and_held_during_and_released_after_training(tmp_path, monkeypatch):
    held = []
    save = trainer.save_checkpoint

    def save_and_probe(run_dir, *args, **kwargs):
        held.append(not lock_is_free(run_dir))
        return save(run_dir, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", save_and_probe)
    with dir_lock(tmp_path / "other"):  # another directory's lock does not stop this run
        train(config(steps=3), tmp_path / "run", progress=False)
        assert not lock_is_free(tmp_path / "other")
    assert held and all(held)  # the run directory was locked while training saved
    assert lock_is_free(tmp_path / "run")  # released when train returned


def test_torchrun_ranks_other_than_zero_do_not_take_the_lock(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with dir_lock(run):
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(TarflowError, match="in use by another training process"):
            train(config(steps=3), run, progress=False)
        monkeypatch.setenv("RANK", "1")
        train(config(steps=3), run, progress=False)


def test_a_file_system_without_flock_trains_unlocked_with_a_warning(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock"):
        train(config(steps=3), tmp_path / "run", progress=False)


# ----- bad data in a folder dataset, through the trainer ----------------------------------------------
def image_folder(root: Path, bad: int) -> Path:
    """train/test folders of 8x8 grey PNGs in two classes, with ``bad`` truncated files in train/."""
    from PIL import Image

    rng = random.Random(0)
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.frombytes("L", (8, 8), bytes(rng.randrange(256) for _ in range(64))).save(
                    root / split / cls / f"{i}.png")
    for i in range(bad):
        f = root / "train" / "a" / f"{i}.png"
        f.write_bytes(f.read_bytes()[:30])  # cut inside the PNG header: unreadable
    return root


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_bad_images_in_a_folder_dataset(tmp_path, monkeypatch, policy):
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    folder = image_folder(tmp_path / "images", bad=2)
    cfg = config(steps=2, checkpoint_every=0, eval_every=0, sample_every=0, num_samples=2, batch_size=4,
                 dataset="folder", data_dir=str(folder), on_bad_image=policy)
    cfg.model.num_classes = 2
    if policy == "error":
        with pytest.raises(TarflowError) as e:
            train(cfg, tmp_path / "run", progress=False)
        assert str(folder / "train" / "a" / "0.png") in str(e.value) and "1.png" in str(e.value)
    else:
        with pytest.warns(BadImageWarning, match="skipped 2 of the 24 train images"):
            result = train(cfg, tmp_path / "run", progress=False)
        assert result["images"] == 8 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
