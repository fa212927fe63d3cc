"""Building blocks of the SimSID/HCASC generator: patch (re)assembly, the SE residual block, the up block.

Shapes follow PyTorch's channel-first convention: ``N x C x H x W``. ``num_patch`` is the number of
patches per image side, so an image holds ``P = num_patch ** 2`` patches, ordered row-major.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.layers.factories import Act, Norm
from torch import Tensor, nn

__all__ = ["patchify", "unpatchify", "binary_position_code", "conv_norm_act", "SEResBlock", "UpBlock"]


def patchify(x: Tensor, num_patch: int) -> Tensor:
    """Split images into ``num_patch x num_patch`` non-overlapping patches.

    Args:
        x: ``B x C x H x W`` with ``H`` and ``W`` divisible by ``num_patch``.
        num_patch: patches per image side.

    Returns:
        ``(B * P) x C x (H / num_patch) x (W / num_patch)``; patch ``p`` of image ``b`` is row
        ``b * P + p`` and ``p`` runs row-major over the patch grid.
    """
    b, c, h, w = x.shape
    ph, pw = h // num_patch, w // num_patch
    x = x.reshape(b, c, num_patch, ph, num_patch, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * num_patch * num_patch, c, ph, pw)


def unpatchify(x: Tensor, num_patch: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B * P) x C x h x w`` -> ``B x C x (h * num_patch) x (w * num_patch)``."""
    n, c, ph, pw = x.shape
    b = n // (num_patch * num_patch)
    x = x.reshape(b, num_patch, num_patch, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, num_patch * ph, num_patch * pw)


def binary_position_code(num_positions: int) -> Tensor:
    """Binary code of every patch position, most significant bit first.

    Uses ``floor(log2(num_positions)) + 1`` bits (3 bits for 4 positions, 5 bits for 16).

    Returns:
        ``num_positions x num_bits`` float tensor of zeros and ones.
    """
    num_bits = int(math.floor(math.log2(num_positions))) + 1
    positions = torch.arange(num_positions).unsqueeze(1)
    shifts = torch.arange(num_bits - 1, -1, -1).unsqueeze(0)
    return ((positions >> shifts) & 1).float()


def conv_norm_act(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, act: bool = True, bias: bool = False
) -> Convolution:
    """2D convolution ("same" padding for stride 1) -> BatchNorm -> optional ReLU, as a MONAI ``Convolution``."""
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=stride,
        kernel_size=kernel_size,
        act=(Act.RELU, {"inplace": True}) if act else None,
        norm=Norm.BATCH,
        bias=bias,
    )


class SEResBlock(nn.Module):
    """Residual block with channel-wise recalibration (HCASC's "double conv" with squeeze-and-excitation).

    ``y = conv3x3-BN-ReLU(x)`` (optionally strided), then
    ``out = ReLU(SE(conv3x3-BN-ReLU-conv3x3-BN(y)) + y)``. The SE layer is MONAI's
    :class:`~monai.networks.blocks.ChannelSELayer` with ``out_channels // se_reduction`` hidden units
    (at least 1).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (2 halves the spatial size).
        se_reduction: reduction ratio of the SE layer.

    Shapes: ``N x in_channels x H x W`` -> ``N x out_channels x ceil(H / stride) x ceil(W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, se_reduction: int = 24) -> None:
        super().__init__()
        self.conv_in = conv_norm_act(in_channels, out_channels, stride=stride)
        self.conv_body = nn.Sequential(
            conv_norm_act(out_channels, out_channels), conv_norm_act(out_channels, out_channels, act=False)
        )
        self.se = ChannelSELayer(spatial_dims=2, in_channels=out_channels, r=min(se_reduction, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.conv_in(x)
        out = self.se(self.conv_body(shortcut))
        return torch.relu_(out + shortcut)


class UpBlock(nn.Module):
    """Decoder level: bilinear upsampling to the skip's size, skip operation, then :class:`SEResBlock`.

    Args:
        in_channels: channels of the input feature.
        skip_channels: channels of the skip feature (used by ``op="concat"`` only).
        out_channels: output channels.
        op: ``"concat"`` concatenates ``[skip, upsampled]``; ``"none"`` ignores the skip's content
            (it only gives the target size), so the shallow levels cannot copy the input.
        se_reduction: reduction ratio of the SE layer.

    Shapes: ``x: N x in_channels x h x w``, ``skip: N x skip_channels x H x W`` ->
    ``N x out_channels x H x W``.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, op: str = "concat", se_reduction: int = 24
    ) -> None:
        super().__init__()
        if op not in ("concat", "none"):
            raise ValueError(f"op must be 'concat' or 'none', got {op!r}.")
        self.op = op
        block_in = in_channels + skip_channels if op == "concat" else in_channels
        self.block = SEResBlock(block_in, out_channels, se_reduction=se_reduction)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        if self.op == "concat":
            x = torch.cat([skip, x], dim=1)
        return self.block(x)
