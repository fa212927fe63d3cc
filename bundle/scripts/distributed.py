"""Multi-process training with ``torch.distributed``: process group, device placement, DDP and rank helpers.

``configs/multi_gpu_train.json`` calls these; the single-process configs never need them, and every helper
here is a no-op (or returns the single-process answer) when no process group is initialised. Launch with
``torchrun`` (one process per GPU, or per CPU worker with ``--device cpu`` and the gloo backend).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from .utils import as_bool, unwrap

__all__ = [
    "get_rank",
    "get_world_size",
    "is_main_process",
    "local_rank",
    "rank_device",
    "init_distributed",
    "destroy_distributed",
    "configure_backends",
    "prepare_module",
    "wrap_ddp",
    "gather_objects",
    "average_batchnorm_statistics",
    "BatchNormStatisticsSync",
]

logger = logging.getLogger(__name__)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process in the default group; 0 without a process group."""
    return dist.get_rank() if _distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if _distributed() else 1


def is_main_process() -> bool:
    """Whether this process writes files and logs: rank 0, or the only process."""
    return get_rank() == 0


def local_rank() -> int:
    """Rank of this process on its machine, from ``LOCAL_RANK`` (set by ``torchrun``); 0 when unset."""
    return int(os.environ.get("LOCAL_RANK", 0))


def rank_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def _cuda_index(device: torch.device) -> int:
    """The CUDA device index of ``device``; a bare ``"cuda"`` means this process's ``LOCAL_RANK``."""
    return device.index if device.index is not None else local_rank()


def init_distributed(device: torch.device | str, backend: str | None = None, timeout_s: float = 1800.0) -> None:
    """Join the process group that ``torchrun`` set up (``env://``); does nothing when already joined.

    Args:
        device: this process's device; ``cuda`` devices select NCCL and become the current CUDA device (a bare
            ``"cuda"`` means ``cuda:LOCAL_RANK``), anything else selects gloo.
        backend: force a backend instead.
        timeout_s: how long a collective may wait for the other ranks before failing (instead of hanging).

    Raises:
        RuntimeError: when ``torch.distributed`` is unavailable or the process was not started by ``torchrun``.
    """
    if _distributed():
        return
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support; use configs/train.json instead.")
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi-process training needs the environment torchrun sets ({', '.join(missing)} missing): start it with "
            "'torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
            "\"['configs/train.json','configs/multi_gpu_train.json']\"'."
        )
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(_cuda_index(device))
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("rank %d of %d joined the %s process group on %s", get_rank(), get_world_size(), backend, device)


def destroy_distributed() -> None:
    """Leave the process group, if one is initialised."""
    if _distributed():
        dist.destroy_process_group()


def configure_backends(cudnn_benchmark: bool = False) -> None:
    """Set ``torch.backends.cudnn.benchmark`` (call after ``set_determinism``, which switches it off).

    Benchmark mode lets cuDNN pick the fastest convolution algorithms for the fixed input size, at the price
    of bit-for-bit reproducibility between runs. ``"true"``/``"false"`` strings (command line) are read as booleans.
    """
    torch.backends.cudnn.benchmark = as_bool(cudnn_benchmark, "cudnn_benchmark")


def prepare_module(
    module: nn.Module, device: torch.device | str, channels_last: bool = False, sync_batchnorm: bool = False
) -> nn.Module:
    """Move ``module`` to ``device``, optionally with channels-last weights and synchronised BatchNorm.

    Args:
        module: the network (changed in place where possible, and returned).
        device: its device.
        channels_last: store 4-D weights channels-last; convolutions then produce channels-last activations,
            which tensor cores prefer under mixed precision. Memory queues and other buffers are unchanged.
        sync_batchnorm: replace every BatchNorm by ``SyncBatchNorm`` (batch statistics over all ranks); CUDA only.

    The flags may be ``"true"``/``"false"`` strings (command line).

    Returns:
        the prepared module (the same parameter objects, so optimisers built on it stay valid).
    """
    device = torch.device(device)
    if as_bool(sync_batchnorm, "sync_batchnorm"):
        if device.type != "cuda":
            raise ValueError(f"sync_batchnorm needs CUDA devices, got {device}; set sync_batchnorm to false.")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module = module.to(device)
    if as_bool(channels_last, "channels_last"):
        module = module.to(memory_format=torch.channels_last)
    return module


def wrap_ddp(
    module: nn.Module,
    device: torch.device | str,
    broadcast_buffers: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """``DistributedDataParallel`` around ``module``, with every buffer copied from rank 0 first.

    DDP copies the parameters from rank 0 when it is built; the buffers (memory queues, BatchNorm statistics)
    are copied here as well, so all ranks start from the same model even when ``broadcast_buffers`` is off.
    Without a process group the module is returned unchanged.

    Args:
        module: the network, already on ``device``.
        device: this process's device (its CUDA index goes to ``device_ids``; the CPU uses none).
        broadcast_buffers: DDP's per-forward copy of rank 0's buffers. Off by default: the memory queues are kept
            identical by their gathered writes, and :class:`BatchNormStatisticsSync` averages BatchNorm statistics
            once per epoch, so this would only copy the queues (megabytes) on every forward.
        find_unused_parameters: needed only for configurations where some parameters get no gradient.

    The flags may be ``"true"``/``"false"`` strings (command line).
    """
    if not _distributed():
        return module
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
    device = torch.device(device)
    device_ids = [_cuda_index(device)] if device.type == "cuda" else None
    return DistributedDataParallel(
        module,
        device_ids=device_ids,
        broadcast_buffers=as_bool(broadcast_buffers, "ddp_broadcast_buffers"),
        find_unused_parameters=as_bool(find_unused_parameters, "ddp_find_unused_parameters"),
    )


def gather_objects(items: Sequence[Any]) -> list[Any]:
    """The concatenation, in rank order, of every rank's ``items`` (picklable objects); ``items`` alone without
    a process group. Every rank must call it."""
    if get_world_size() == 1:
        return list(items)
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for rank_items in gathered for item in rank_items]


def average_batchnorm_statistics(modules: Sequence[nn.Module]) -> None:
    """Replace the running mean and variance of every BatchNorm layer by their average over all ranks.

    Each rank's BatchNorm layers see only that rank's batches, so their running statistics drift apart; after
    this call every rank holds the same statistics (``SyncBatchNorm`` layers, already identical, are skipped).
    Every rank must call it.

    Args:
        modules: networks, possibly DDP-wrapped.
    """
    world_size = get_world_size()
    if world_size == 1:
        return
    buffers = [
        buf
        for module in modules
        for layer in unwrap(module).modules()
        if isinstance(layer, _BatchNorm) and not isinstance(layer, nn.SyncBatchNorm)
        for buf in (layer.running_mean, layer.running_var)
        if buf is not None
    ]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).float() for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    for buf, value in zip(buffers, flat.split([b.numel() for b in buffers])):
        buf.copy_(value.view_as(buf))


class BatchNormStatisticsSync:
    """Averages the BatchNorm statistics of ``modules`` over all ranks when each training epoch completes.

    Attach it before the validation handler (first in the trainer's handlers), so validation, the score
    statistics and the checkpoints see the same model on every rank.

    Args:
        modules: the networks (possibly DDP-wrapped) whose BatchNorm layers are averaged.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        average_batchnorm_statistics(self.modules)
