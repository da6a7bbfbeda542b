"""torchrun-native data parallelism: DDP or FSDP2, with no process management of our own.

Launched by `torchrun`, every process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment and
joins one process group (gloo on CPU, NCCL on CUDA). Without torchrun, everything here is a no-op and
training runs in one process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from ..flows import TarFlow
from .device import pick_device


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"  # how the model is shared when world_size > 1: "ddp" or "fsdp"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, draws sample grids and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def sharded(self) -> bool:
        """FSDP: every rank must take part in each forward (eval, sampling), not only rank 0."""
        return self.distributed and self.strategy == "fsdp"

    def shard(self, batch: int) -> slice:
        """This rank's contiguous part of a global batch of ``batch`` items."""
        per_rank = batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str, strategy: str = "ddp", backend: str = "auto", timeout_s: float = 300.0
          ) -> tuple[Cluster, torch.device]:
    """Join the torchrun job if there is one; return this process's place in it and its device.

    ``backend`` "auto" is NCCL on CUDA and gloo otherwise. ``timeout_s`` bounds every collective, so a
    rank that dies makes the others fail instead of waiting forever.
    """
    if not launched_by_torchrun():
        return Cluster(strategy=strategy), pick_device(device_name)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    elif device.type == "mps":
        device = torch.device("cpu")  # MPS has no collective backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("backend nccl needs CUDA devices; use --backend gloo (or auto) on CPU")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return Cluster(rank, world, local, strategy), device


def teardown() -> None:
    """Leave the process group together (a rank tearing down while another still talks to it can abort)."""
    if dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a failed peer: the error that brought us here matters more
            dist.barrier()
        dist.destroy_process_group()


def check_batch(batch_size: int, cluster: Cluster) -> None:
    if batch_size % cluster.world_size:
        raise ConfigError(f"batch_size={batch_size} (the global batch) must be divisible by the number of "
                          f"processes ({cluster.world_size}); each rank takes batch_size / processes images")


class LogLikelihood(nn.Module):
    """The training objective as a module's forward, log p(x | y) per sample, so DDP can hook it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, noise_level: torch.Tensor | None = None
                ) -> torch.Tensor:
        if noise_level is None:  # the trainer checks its batches (and can compile this)
            return self.model.log_prob(x, y, validate=False)
        return self.model.log_prob(x, y, validate=False, noise_level=noise_level)  # iTARFlow: log p_t(x | y)


def wrap(model: nn.Module, cluster: Cluster, device: torch.device) -> nn.Module:
    """A module whose forward(x, y) is log p(x | y): plain, in DDP, or over a model sharded in place by FSDP2.

    Everything else (optimizer, EMA, checkpoints) keeps using ``model`` itself.
    """
    if cluster.sharded:
        shard(model)
    net = LogLikelihood(model)
    if cluster.distributed and cluster.strategy == "ddp":
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return net


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 in place: each flow block is one unit, the root holds the rest (the prior)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    register_fsdp_forward_method(model, "log_prob")
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The TarFlow inside a DDP / LogLikelihood wrapper (FSDP2 modifies the model in place)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model.model if isinstance(model, LogLikelihood) else model


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (identity in a single process)."""
    if dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank, so that every rank takes the same branch."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out", "Timed out",
             "NCCL communicator was aborted")


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` means another process of the job died or stopped answering (gloo raises a plain
    RuntimeError for it, NCCL a DistError)."""
    if not dist.is_initialized():
        return False
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError)
                                                 and any(s in str(error) for s in LOST_PEER))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights as CPU tensors (a collective under FSDP; there, ranks other than 0 get {})."""
    if isinstance(model, nn.parallel.DistributedDataParallel) or not is_sharded(model):
        return {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, whole, on the CPU: the same format whatever wrote it,
    so a checkpoint of a single process, DDP or FSDP run resumes under any of them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True) if is_sharded(model) else None
    set_optimizer_state_dict(model, optimizer, state, options=options)


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 has sharded this model's parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def plain_copy(model: nn.Module) -> nn.Module:
    """A model usable in one process: the module inside DDP, or for FSDP a whole copy gathered on every rank
    (for evaluation and sampling, whose token-by-token loops must not run collectives)."""
    if not is_sharded(model):
        return unwrap(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    copy = TarFlow(model.config)
    copy.load_state_dict(state)
    return copy.to(next(iter(state.values())).device).eval()
