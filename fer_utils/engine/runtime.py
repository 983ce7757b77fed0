"""Where and how training runs: device choice, torchrun processes, seeds, mixed precision.

Shared by training, evaluation, saliency and the app, so every part picks the
device the same way and unwraps a DistributedDataParallel model the same way.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


class TrainingError(RuntimeError):
    """Training cannot go on: non-finite loss, out of memory, a device that is not there."""


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA, else MPS, else CPU. Asking for a device that is not there is an error."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device=cuda was requested but no CUDA GPU is available (torch {torch.__version__}, "
                                f"built for CUDA {torch.version.cuda}); use device=auto or device=cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps":
        if not mps:
            raise TrainingError("device=mps was requested but the MPS backend is not available; "
                                "use device=auto or device=cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device '{name}'; use auto, cpu, cuda or mps")



def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def rank0_first():
    """Let rank 0 build shared caches (synthetic data, decoded arrays) before the others read them."""
    rank, world = rank_and_world()
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


def log(message: str) -> None:
    """Print on rank 0 only (one line per event, not one per process)."""
    if rank_and_world()[0] == 0:
        print(message, flush=True)


def seed(*keys: int) -> int:
    """A seed mixed from (seed, epoch, stream[, rank]): independent streams, the same on every resume."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AMX or AVX-512 BF16): what makes cpu_bf16 pay."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_cpu_bf16(value: bool | str, device: torch.device) -> bool:
    """The `cpu_bf16` param as trained: "auto" is bf16 only on a CPU that runs it natively (on CUDA `amp`
    decides). Emulated bf16 measured 12x slower than fp32 (7 against 85 img/s, `pool_resnet` width 24 on a
    2-core AMD EPYC with AVX2), while native bf16 doubles fp32's speed (AMX). Resolved before the run is keyed
    and its params saved, so both say which arithmetic trained the weights."""
    if value == "auto":
        return device.type == "cpu" and cpu_has_native_bf16()
    return bool(value)


def amp_dtype(device: torch.device, amp: bool, cpu_bf16: bool = False):
    """The autocast dtype for mixed precision; None = full precision. On CUDA (`amp`): bf16 where the GPU
    supports it, else fp16. On the CPU only when asked (`cpu_bf16`): bf16, the one dtype CPU autocast
    speeds up, and only on CPUs with native bf16 (AMX, AVX-512 BF16); elsewhere it is emulated, slower (warned)."""
    if device.type == "cpu":
        if cpu_bf16 and not cpu_has_native_bf16():
            warnings.warn("cpu_bf16: this CPU has no native bf16 (AMX or AVX-512 BF16), so bf16 is emulated "
                          "and training is much slower than in fp32 (12x measured on an AVX2 CPU); set cpu_bf16=false, "
                          "or cpu_bf16=auto (bf16 only where native)", RuntimeWarning, stacklevel=2)
        return torch.bfloat16 if cpu_bf16 else None
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
