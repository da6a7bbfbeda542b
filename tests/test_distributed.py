"""torchrun on CPU (gloo), two processes: same optimisation as one process, checkpoints portable both ways,
a dead rank stops the job. Each launch starts two Python processes, so these tests take a few seconds each."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port

SCRIPT = str(Path(__file__).with_name("dist_run.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args, nproc=2, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT,
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def single(*args, timeout=240):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def weights(run: Path, name="model.safetensors"):
    return load_file(str(run / "checkpoint" / name))


def assert_close(a, b, tol):
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < tol, worst


def ok(p):
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_take_the_same_step_as_one(tmp_path, strategy):
    """One step, global batch 32: two ranks of 16 give the parameters of one process on all 32."""
    ok(single(tmp_path / "one", 1, 0, strategy))
    ok(torchrun(tmp_path / "two", 1, 0, strategy))
    before = weights(tmp_path / "one")
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "two"), 1e-6)
    assert_close(weights(tmp_path / "one", "ema.safetensors"), weights(tmp_path / "two", "ema.safetensors"), 1e-6)
    assert any(v.abs().sum() > 0 for k, v in before.items() if "proj_out" in k)  # the step did change the model


def test_checkpoints_move_between_torchrun_and_one_process(tmp_path):
    ok(single(tmp_path / "straight", 4, 0, "ddp"))
    # written under torchrun (FSDP), resumed in one process
    ok(torchrun(tmp_path / "a", 4, 2, "fsdp"))
    assert torch.load(tmp_path / "a" / "checkpoint" / "trainer.pt", weights_only=True)["step"] == 2
    ok(single(tmp_path / "a", 4, 0, "fsdp"))
    # written in one process, resumed under torchrun (DDP)
    ok(single(tmp_path / "b", 4, 2, "ddp"))
    ok(torchrun(tmp_path / "b", 4, 0, "ddp"))
    for run in ("a", "b"):
        assert_close(weights(tmp_path / "straight"), weights(tmp_path / run), 1e-5)
        assert (tmp_path / run / "model" / "model.safetensors").is_file()
    logged = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == len(set(logged))  # one writer: rank 0


def test_a_dead_rank_stops_the_job(tmp_path):
    start = time.monotonic()
    p = torchrun(tmp_path / "run", 50, 0, "ddp", 1, 3, timeout=180)
    assert p.returncode != 0
    assert time.monotonic() - start < 120  # stopped, not hung until the collective timeout
    out = p.stdout + p.stderr
    assert "exitcode  : 3" in out, out[-2000:]  # torchrun's summary names the rank that died


def test_the_survivor_of_a_dead_rank_says_why(tmp_path):
    """Two processes joined as torchrun would join them, with no torchrun to stop the survivor (which it may do
    before the survivor has noticed): the survivor stops by itself and says why."""
    port = free_port()
    cmd = [sys.executable, SCRIPT, str(tmp_path / "run"), "50", "0", "ddp", "1", "3"]
    ranks = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for rank in range(2)]
    try:
        survivor, dead = (process.communicate(timeout=180)[0] for process in ranks)
    finally:  # a hung rank is not left running after the test
        for process in ranks:
            process.kill()
    assert ranks[1].returncode == 3, dead[-2000:]
    assert ranks[0].returncode != 0, survivor[-2000:]
    assert "lost contact with the others" in survivor, survivor[-2000:]
    assert "is intact" in survivor, survivor[-2000:]  # and where to resume from


def test_fid_is_split_across_processes(tmp_path):
    """`tarflow fid` under torchrun: each process samples and featurises its share; the FID is the same."""
    import json

    from tarflow import FlowConfig, TarFlow

    class Pool(torch.nn.Module):  # a cheap stand-in for Inception: 48 pooled features
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).reshape(x.shape[0], 48)

    weights_file = tmp_path / "pool.pt"
    torch.jit.save(torch.jit.script(Pool()), str(weights_file))
    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, num_classes=10))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "model", metadata={"dataset": "digits", "levels": 17})
    args = ["-m", "tarflow", "fid", str(tmp_path / "model"), "--weights", str(weights_file), "--count", "30",
            "--sample-batch", "8", "--ref-count", "100", "--split", "test", "--device", "cpu", "--no-progress"]
    env = {**ENV, "TARFLOW_CACHE": str(tmp_path / "cache")}
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240, env=env)
    env["TARFLOW_CACHE"] = str(tmp_path / "cache2")  # the reference statistics computed again, split
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *args], capture_output=True, text=True, timeout=240, env=env)
    a, b = json.loads(ok(one).stdout), json.loads(ok(two).stdout)  # rank 0 alone prints
    assert b["processes"] == 2 and not b["reference"]["cached"]
    assert abs(a["fid"] - b["fid"]) < 1e-6 * max(1.0, a["fid"]), (a["fid"], b["fid"])
