"""The processes of a training run: one, or several under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA).

``start_processes`` joins them at the start of a run; ``end_processes`` checks at its end that they agree and
leaves the process group."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from games.data.errors import InputError


@dataclass
class Processes:
    distributed: bool  # started by torchrun with more than one process
    rank: int
    world: int
    device: torch.device


def resolve_device(name: str, choices: str = "auto, cpu or cuda") -> str:
    """The device a command's ``device=`` names: ``cpu``, ``cuda`` (an InputError where torch sees none, so a CPU
    machine never reaches CUDA by accident), or ``auto`` (cuda where torch sees one, else cpu)."""
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"device must be {choices}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device=cuda, but torch {torch.__version__} sees no CUDA device here: device=cpu (or auto)")
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def start_processes(device: str = "auto", threads: int = 0) -> Processes:
    """Join the process group when ``torchrun`` started several processes; pick the device (``auto``: CUDA if
    there is one, the process's own GPU under torchrun) and torch's thread count (0 = torch's default)."""
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    cuda = resolve_device(device) == "cuda"
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if threads:
        torch.set_num_threads(threads)
    return Processes(distributed, rank, world,
                     torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"))


def check_ranks_agree(module: nn.Module, procs: Processes, what: str = "weights") -> None:
    """All processes must hold identical weights after DDP training; says so on rank 0, or raises."""
    digest = float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(module.parameters())))
    digests = [None] * procs.world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks disagree on the {what}: {digests}")
    if procs.rank == 0:
        print(f"ranks agree: {procs.world} processes hold identical weights (digest {digest:.6f})")


def end_processes(procs: Processes, module: nn.Module, what: str = "weights") -> None:
    """The end of a run under ``torchrun``: all processes must hold the same ``module``; then leave the group."""
    if procs.distributed:
        check_ranks_agree(module, procs, what)
        dist.barrier()  # every rank is done with the group before any leaves it
        dist.destroy_process_group()
