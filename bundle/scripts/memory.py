"""Memories of the SimSID/HCASC generator: sparse addressing, the space-aware queue, the decoder memory.

Every read is batched over memory blocks (one ``einsum``) and runs in fp32 with autocast disabled
locally: the softmax over slots and the top-k renormalisation are not stable in bf16/fp16.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.utils import evenly_divisible_all_gather
from torch import Tensor, nn

__all__ = ["topk_shrink", "hard_shrink", "shrink_weights", "memory_read", "SpaceAwareMemoryQueue", "DecoderMemory"]


def topk_shrink(logits: Tensor, k: int) -> Tensor:
    """Softmax over slots, keep the ``k`` largest weights, renormalise them to sum 1 (straight-through).

    The forward value is the hard, renormalised top-k weights; the gradient is that of the softmax.

    Args:
        logits: ``... x S`` addressing logits.
        k: number of slots kept, ``1 <= k <= S``.

    Returns:
        ``... x S`` weights with exactly ``k`` non-zeros per row, each row summing to 1.
    """
    soft = torch.softmax(logits, dim=-1)
    top_val, top_idx = soft.detach().topk(k, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, top_idx, top_val / top_val.sum(-1, keepdim=True))
    if not soft.requires_grad:
        return hard
    return soft + (hard - soft.detach())


def hard_shrink(logits: Tensor, lambd: float, eps: float = 1e-12) -> Tensor:
    """Hard shrinkage ``ReLU(w - lambd)`` (rescaled to keep ``w`` where it survives), then L1-normalisation.

    Args:
        logits: ``... x S`` addressing weights ``w``.
        lambd: shrinkage threshold.
        eps: guards the division.

    Returns:
        ``... x S`` non-negative weights, each row summing to 1 (or all zeros).
    """
    shifted = logits - lambd
    weights = F.relu(shifted) * logits / (shifted.abs() + eps)
    return F.normalize(weights, p=1.0, dim=-1)


def shrink_weights(logits: Tensor, shrink_thres: float) -> Tensor:
    """Sparse addressing: an ``int`` threshold is top-k (:func:`topk_shrink`), a ``float`` is hard shrinkage.

    A non-positive threshold keeps the plain dot-product weights.
    """
    if shrink_thres <= 0:
        return logits
    if isinstance(shrink_thres, int):
        return topk_shrink(logits, shrink_thres)
    return hard_shrink(logits, shrink_thres)


def _check_shrinkage(shrink_thres: float, num_slots: int) -> None:
    """Top-k addressing (``int`` threshold) cannot keep more slots than the memory has."""
    if isinstance(shrink_thres, int) and shrink_thres > num_slots:
        raise ValueError(f"top-k shrink_thres ({shrink_thres}) exceeds the number of slots ({num_slots}).")


def memory_read(queries: Tensor, memory: Tensor, shrink_thres: float) -> Tensor:
    """Read every memory block at once: ``out[b, p] = shrink(q[b, p] . M[p]^T) . M[p]``.

    Runs in at least fp32 with autocast disabled, whatever the surrounding precision.

    Args:
        queries: ``B x P x C`` one query per batch item and memory block.
        memory: ``P x S x C`` one memory of ``S`` slots per block.
        shrink_thres: see :func:`shrink_weights`.

    Returns:
        ``B x P x C`` in fp32 (fp64 for fp64 inputs), contiguous: the einsum's batched product gives a
        ``P x B x C`` buffer, and a linear layer on that permuted view cannot fold ``B`` and ``P`` into one
        matrix product; under bf16 autocast on the CPU it then copied its weight once per batch item (a 16 x 2048
        x 4096 copy in the in-painting block's key/value projection, 1.1 s of a 1.9 s inference batch).
    """
    dtype = torch.promote_types(torch.promote_types(queries.dtype, memory.dtype), torch.float32)
    with torch.autocast(device_type=queries.device.type, enabled=False):
        queries, memory = queries.to(dtype), memory.to(dtype)
        weights = shrink_weights(torch.einsum("bpc,psc->bps", queries, memory), shrink_thres)
        return torch.einsum("bps,psc->bpc", weights, memory).contiguous()


def _uniform_slots(shape: tuple[int, ...]) -> Tensor:
    """``uniform(-1/sqrt(C), 1/sqrt(C))`` initial slots, ``C = shape[-1]``."""
    bound = 1.0 / math.sqrt(shape[-1])
    return torch.empty(shape).uniform_(-bound, bound)


class SpaceAwareMemoryQueue(nn.Module):
    """One FIFO queue of past query vectors per patch position, read with sparse addressing.

    The queues are not learned: ``memory`` (``P x S x C``) and the ring write pointer ``ptr`` are buffers,
    so they travel with ``state_dict``. Reading lets the gradient reach the queries (through the softmax)
    but never the queue. :meth:`write` appends a batch of queries to every position's queue; the trainer
    calls it once per generator step. Under ``torch.distributed`` the queries of all ranks are gathered
    first (in rank order), so every rank's queue stays identical.

    Args:
        num_positions: ``P``, number of patch positions.
        num_slots: ``S``, queue length per position.
        slot_dim: ``C``, length of a query vector.
        shrink_thres: sparse addressing, see :func:`shrink_weights`.
    """

    memory: Tensor
    ptr: Tensor

    def __init__(self, num_positions: int, num_slots: int, slot_dim: int, shrink_thres: float = 5) -> None:
        super().__init__()
        _check_shrinkage(shrink_thres, num_slots)
        self.num_slots = num_slots
        self.shrink_thres = shrink_thres
        self.register_buffer("memory", _uniform_slots((num_positions, num_slots, slot_dim)))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, queries: Tensor) -> Tensor:
        """``B x P x C`` queries -> ``B x P x C`` fp32 memory outputs, position ``p`` read from queue ``p``."""
        return memory_read(queries, self.memory, self.shrink_thres)

    @torch.no_grad()
    def write(self, queries: Tensor) -> None:
        """Write ``B x P x C`` queries FIFO: item ``b`` of position ``p`` goes to slot ``(ptr + b) % S``.

        When more than ``S`` items arrive, only the newest ``S`` survive, as with sequential writes.
        """
        if dist.is_available() and dist.is_initialized():
            queries = evenly_divisible_all_gather(queries.contiguous(), concat=True)
        num_items = queries.shape[0]
        kept = min(num_items, self.num_slots)
        offsets = torch.arange(num_items - kept, num_items, device=self.ptr.device)
        slots = (self.ptr + offsets) % self.num_slots
        self.memory[:, slots] = queries[num_items - kept :].transpose(0, 1).to(self.memory)
        self.ptr.copy_((self.ptr + num_items) % self.num_slots)


class DecoderMemory(nn.Module):
    """Learnable memory matrices over a grid of spatial windows (SimSID's hierarchical decoder memory).

    The feature map is cut into ``grid x grid`` windows (``num_memory = grid ** 2``); each flattened window
    is rebuilt from its own learnable memory by sparse addressing. In training the result is mixed with the
    input by a per-pixel Bernoulli(``mask_ratio``) mask (1 keeps the memory output).

    Args:
        num_memory: number of windows; a square number.
        num_slots: slots per window memory.
        channels: channels of the feature map.
        spatial_size: ``(H, W)`` of the feature map, each divisible by ``sqrt(num_memory)``.
        shrink_thres: sparse addressing, see :func:`shrink_weights`.
        mask_ratio: probability that a pixel takes the memory output in training.

    Shapes: ``N x channels x H x W`` -> same.
    """

    def __init__(
        self,
        num_memory: int,
        num_slots: int,
        channels: int,
        spatial_size: tuple[int, int],
        shrink_thres: float = 5,
        mask_ratio: float = 0.95,
    ) -> None:
        super().__init__()
        _check_shrinkage(shrink_thres, num_slots)
        grid = math.isqrt(num_memory)
        if grid * grid != num_memory:
            raise ValueError(f"num_memory must be a square number, got {num_memory}.")
        if spatial_size[0] % grid or spatial_size[1] % grid:
            raise ValueError(f"feature size {spatial_size} is not divisible into a {grid}x{grid} window grid.")
        self.grid = grid
        self.shrink_thres = shrink_thres
        self.mask_ratio = mask_ratio
        slot_dim = channels * (spatial_size[0] // grid) * (spatial_size[1] // grid)
        self.memory = nn.Parameter(_uniform_slots((num_memory, num_slots, slot_dim)))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g, wh, ww = self.grid, h // self.grid, w // self.grid
        windows = x.reshape(n, c, g, wh, g, ww).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * wh * ww)
        out = memory_read(windows, self.memory, self.shrink_thres).to(x.dtype)
        out = out.reshape(n, g, g, c, wh, ww).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
        if self.training:
            out = torch.where(torch.rand(n, 1, h, w, device=x.device) < self.mask_ratio, out, x)
        return out
