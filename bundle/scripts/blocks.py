"""Building blocks of the SimSID/HCASC generator: patch (re)assembly, the SE residual block, the up block.

Shapes follow PyTorch's channel-first convention: ``N x C x H x W``. ``num_patch`` is the number of
patches per image side, so an image holds ``P = num_patch ** 2`` patches, ordered row-major.

Which computation a block runs is decided at every forward from the block's mode, the input's device and the block's
layer types:

* training (autograd recording) on the CPU, with plain ``nn.Conv2d``/``nn.BatchNorm2d`` layers: fused
  memory-lean autograd functions (BatchNorm, ReLU, the SE scaling and the upsampled decoder input recomputed in
  backward instead of kept, which about halves the activations kept for backward at the price of recomputing them);
* training on any other device (CUDA, ...), or with any other layer type (e.g. ``nn.SyncBatchNorm`` after
  ``nn.SyncBatchNorm.convert_sync_batchnorm``): the plain MONAI/PyTorch modules, each through its own ``forward``;
* eval mode, on every device: each BatchNorm folded into its convolution (running statistics, plain ops).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.layers.factories import Act, Norm
from torch import Tensor, nn

__all__ = ["patchify", "unpatchify", "binary_position_code", "conv_norm_act", "SEResBlock", "UpBlock"]


def patchify(x: Tensor, num_patch: int, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """Split images into ``num_patch x num_patch`` non-overlapping patches.

    Args:
        x: ``B x C x H x W`` with ``H`` and ``W`` divisible by ``num_patch``.
        num_patch: patches per image side.
        memory_format: layout of the result (``torch.contiguous_format`` or ``torch.channels_last``).

    Returns:
        ``(B * P) x C x (H / num_patch) x (W / num_patch)``; patch ``p`` of image ``b`` is row
        ``b * P + p`` and ``p`` runs row-major over the patch grid.
    """
    b, c, h, w = x.shape
    ph, pw = h // num_patch, w // num_patch
    if memory_format == torch.channels_last:
        x = x.permute(0, 2, 3, 1).reshape(b, num_patch, ph, num_patch, pw, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b * num_patch * num_patch, ph, pw, c).permute(0, 3, 1, 2)
    x = x.reshape(b, c, num_patch, ph, num_patch, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * num_patch * num_patch, c, ph, pw)


def unpatchify(x: Tensor, num_patch: int, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """Inverse of :func:`patchify`: ``(B * P) x C x h x w`` -> ``B x C x (h * num_patch) x (w * num_patch)``."""
    n, c, ph, pw = x.shape
    b = n // (num_patch * num_patch)
    if memory_format == torch.channels_last:
        x = x.permute(0, 2, 3, 1).reshape(b, num_patch, num_patch, ph, pw, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, num_patch * ph, num_patch * pw, c).permute(0, 3, 1, 2)
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


# device types on which training runs the fused memory-lean autograd functions (measured on the CPU only)
_FUSED_DEVICE_TYPES = frozenset({"cpu"})


def _lean_training(block: SEResBlock, x: Tensor) -> bool:
    """Whether ``block`` trains on input ``x`` through the fused memory-lean autograd functions.

    True only in training mode with autograd recording, for an input on a device type in ``_FUSED_DEVICE_TYPES``
    (the CPU), and when every convolution and BatchNorm of the block is exactly ``nn.Conv2d``/``nn.BatchNorm2d``:
    the fused functions use the layers' tensors without calling the layers, so any subclass (``nn.SyncBatchNorm``
    above all, whose ``forward`` synchronises the batch statistics over the ranks) must run its own ``forward``.
    Everywhere else the plain modules run.
    """
    return (
        block.training
        and torch.is_grad_enabled()
        and x.device.type in _FUSED_DEVICE_TYPES
        and all(
            type(layer.conv) is nn.Conv2d and type(layer.adn.N) is nn.BatchNorm2d
            for layer in (block.conv_in, *block.conv_body)
        )
    )


def _folded_inference(module: nn.Module) -> bool:
    """Whether ``module`` runs the inference path with BatchNorm folded into the convolutions (eval mode)."""
    return not module.training


def _conv_bn_folded(layer: Convolution, x: Tensor) -> Tensor:
    """``BN(conv(x))`` of a conv-BN(-act) ``layer`` in eval mode, as one convolution with the BN folded in."""
    conv, bn = layer.conv, layer.adn.N
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return F.conv2d(x, conv.weight * scale[:, None, None, None], bias, *_conv_args(conv))


def _bn_update_momentum(bn: nn.BatchNorm2d) -> float:
    """Count a training batch and return its running-statistics momentum, as ``nn.BatchNorm2d`` does."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def _bn_affine(weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-channel ``scale, shift`` (``C x 1 x 1``) with ``BN(c) = c * scale + shift`` for batch statistics."""
    scale = invstd * weight
    shift = bias - mean * scale
    return scale.to(dtype)[:, None, None], shift.to(dtype)[:, None, None]


def _conv_args(conv: nn.Conv2d) -> tuple:
    """``stride, padding, dilation, groups`` of ``conv``, in ``F.conv2d``'s order."""
    return conv.stride, conv.padding, conv.dilation, conv.groups


def _backward_args(conv_args: tuple) -> tuple:
    """``aten.convolution_backward``'s arguments after ``bias_sizes`` for a non-transposed convolution."""
    stride, padding, dilation, groups = conv_args
    return stride, padding, dilation, False, [0, 0], groups


def _conv_weight_grad(grad_out: Tensor, inputs: Tensor, weight: Tensor, conv_args: tuple) -> Tensor:
    """Gradient of ``conv(inputs, weight)`` (no bias) with respect to ``weight``, given the output gradient."""
    return torch.ops.aten.convolution_backward(
        grad_out, inputs, weight, None, *_backward_args(conv_args), [False, True, False]
    )[1]


def _conv_input_grad(grad_out: Tensor, input_shape: Sequence[int], weight: Tensor, conv_args: tuple) -> Tensor:
    """Gradient of ``conv(inputs, weight)`` with respect to ``inputs`` of shape ``input_shape``.

    Only the shape of the input matters, so an unwritten (``torch.empty``) placeholder in the layout of
    ``grad_out`` stands for it.
    """
    placeholder = torch.empty(
        tuple(input_shape), dtype=grad_out.dtype, device=grad_out.device, memory_format=_memory_format_of(grad_out)
    )
    return torch.ops.aten.convolution_backward(
        grad_out, placeholder, weight, None, *_backward_args(conv_args), [True, False, False]
    )[0]


def _memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels-last 4D tensor (that is not also channels-first), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _bn_relu_conv(c: Tensor, bn_weight: Tensor, bn_bias: Tensor, conv_weight: Tensor, bn: nn.BatchNorm2d,
                  conv: nn.Conv2d) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``y = ReLU(BN(c))`` on batch statistics (updating the running ones) and ``z = conv(y)``, in the dtype of ``c``.

    Returns ``z, y`` and the batch ``mean, invstd``.
    """
    momentum = _bn_update_momentum(bn)
    y, mean, invstd = torch.ops.aten.native_batch_norm(
        c, bn_weight, bn_bias, bn.running_mean, bn.running_var, True, momentum, bn.eps
    )
    y = y.relu_()
    return F.conv2d(y, conv_weight.to(c.dtype), None, *_conv_args(conv)), y, mean, invstd


def _bn_relu_conv_backward(
    grad_z: Tensor, grad_y: Tensor | None, c: Tensor, bn_weight: Tensor, bn_bias: Tensor, conv_weight: Tensor,
    mean: Tensor, invstd: Tensor, eps: float, conv_args: tuple, needs: Sequence[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Backward of :func:`_bn_relu_conv`, recomputing ``y`` from ``c``: gradients of ``c``, the BN weight and bias and
    the conv weight (``None`` where ``needs`` says so). ``grad_y`` (may be ``None``) is ``y``'s own gradient."""
    scale, shift = _bn_affine(bn_weight, bn_bias, mean, invstd, c.dtype)
    y = torch.addcmul(shift, c, scale).relu_()
    grad_act, grad_conv_weight, _ = torch.ops.aten.convolution_backward(
        grad_z, y, conv_weight.to(c.dtype), None, *_backward_args(conv_args), [True, needs[3], False]
    )
    if grad_y is not None:
        grad_act += grad_y
    torch.ops.aten.threshold_backward.grad_input(grad_act, y, 0, grad_input=grad_act)  # ReLU, in place
    del y
    grad_c, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
        grad_act, c, bn_weight, None, None, mean, invstd, True, eps, list(needs[:3])
    )
    if grad_conv_weight is not None:
        grad_conv_weight = grad_conv_weight.to(conv_weight.dtype)
    return grad_c, grad_bn_weight, grad_bn_bias, grad_conv_weight


class _BatchNormReLUConv(torch.autograd.Function):
    """``z = conv(ReLU(BN(c)))`` with BN on batch statistics, keeping only ``c`` for backward.

    ``y = ReLU(BN(c))`` is recomputed in backward (one elementwise pass) instead of being stored next
    to ``c``, which halves the activations these layers keep. With ``return_act`` ``y`` is returned as a
    second output (for the residual shortcut); its gradient is added to the convolution's.
    Runs in the dtype of ``c`` (so after an autocast convolution, in the autocast dtype).
    """

    @staticmethod
    def forward(ctx, c, bn_weight, bn_bias, conv_weight, bn, conv, return_act):
        with torch.autocast(device_type=c.device.type, enabled=False):
            z, y, mean, invstd = _bn_relu_conv(c, bn_weight, bn_bias, conv_weight, bn, conv)
        ctx.save_for_backward(c, bn_weight, bn_bias, conv_weight, mean, invstd)
        ctx.eps, ctx.conv_args = bn.eps, _conv_args(conv)
        ctx.set_materialize_grads(False)
        return (z, y) if return_act else z

    @staticmethod
    def backward(ctx, grad_z, grad_y=None):
        c, bn_weight, bn_bias, conv_weight, mean, invstd = ctx.saved_tensors
        with torch.autocast(device_type=c.device.type, enabled=False):
            grads = _bn_relu_conv_backward(grad_z, grad_y, c, bn_weight, bn_bias, conv_weight, mean, invstd, ctx.eps,
                                           ctx.conv_args, ctx.needs_input_grad[:4])
        return *grads, None, None, None


class _ConvBatchNormReLUConv(torch.autograd.Function):
    """``c = conv_in(x)``, then ``z, y`` of :class:`_BatchNormReLUConv`, keeping only ``x`` for backward.

    For a block whose input has few channels (the stem's one-channel image) recomputing ``c`` in backward
    costs little (``in_channels`` multiply-adds per output value and tap) and saves storing it, a full
    ``out_channels`` activation at the highest resolution. Returns ``(z, y)``. Runs in the autocast dtype when
    autocast is on, else in the dtype of ``x``.
    """

    @staticmethod
    def forward(ctx, x, conv_in_weight, bn_weight, bn_bias, conv_weight, conv_in, bn, conv):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device_type=device, enabled=False):
            c = F.conv2d(x.to(dtype), conv_in_weight.to(dtype), None, *_conv_args(conv_in))
            z, y, mean, invstd = _bn_relu_conv(c, bn_weight, bn_bias, conv_weight, bn, conv)
        ctx.save_for_backward(x, conv_in_weight, bn_weight, bn_bias, conv_weight, mean, invstd)
        ctx.eps, ctx.conv_in_args, ctx.conv_args, ctx.dtype = bn.eps, _conv_args(conv_in), _conv_args(conv), dtype
        ctx.set_materialize_grads(False)
        return z, y

    @staticmethod
    def backward(ctx, grad_z, grad_y=None):
        x, conv_in_weight, bn_weight, bn_bias, conv_weight, mean, invstd = ctx.saved_tensors
        need_x, need_conv_in = ctx.needs_input_grad[:2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            inputs, weight_in = x.to(ctx.dtype), conv_in_weight.to(ctx.dtype)
            c = F.conv2d(inputs, weight_in, None, *ctx.conv_in_args)
            grad_c, *grads = _bn_relu_conv_backward(
                grad_z, grad_y, c, bn_weight, bn_bias, conv_weight, mean, invstd, ctx.eps, ctx.conv_args,
                [need_x or need_conv_in, *ctx.needs_input_grad[2:5]],
            )
            del c
            grad_x = grad_conv_in = None
            if grad_c is not None:
                grad_x, grad_conv_in, _ = torch.ops.aten.convolution_backward(
                    grad_c, inputs, weight_in, None, *_backward_args(ctx.conv_in_args), [need_x, need_conv_in, False]
                )
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        if grad_conv_in is not None:
            grad_conv_in = grad_conv_in.to(conv_in_weight.dtype)
        return grad_x, grad_conv_in, *grads, None, None, None


class _BatchNormSEAddReLU(torch.autograd.Function):
    """``out = ReLU(b * s + r)`` with ``b = BN(c)`` (batch statistics), ``s = se_fc(mean_hw(b))`` and shortcut ``r``.

    The tail of an SE residual block in one function: ``b`` is never materialised (``out`` is
    ``c * (scale * s) + shift * s + r`` with BN's per-channel ``scale, shift``, written into ``r``'s memory;
    ``r`` must not be needed afterwards), and backward adds the squeeze's gradient to that of ``b`` before a
    single BatchNorm backward. Keeps ``c`` (kept by the convolution before) and ``out``; the small SE MLP
    ``se_fc`` (``N x C -> N x C``, parameters ``fc_params``) is re-run on the saved ``N x C`` squeeze in
    backward, under the autocast state of the forward pass.
    """

    @staticmethod
    def forward(ctx, c, bn_weight, bn_bias, r, bn, se_fc, *fc_params):
        device, dtype = c.device.type, torch.promote_types(c.dtype, torch.float32)
        with torch.autocast(device_type=device, enabled=False):
            momentum = _bn_update_momentum(bn)
            mean, var = torch.batch_norm_update_stats(c, bn.running_mean, bn.running_var, momentum)
            invstd = torch.rsqrt(var + bn.eps)
            scale, shift = _bn_affine(bn_weight, bn_bias, mean, invstd, dtype)
            pooled = torch.addcmul(shift[:, 0, 0], c.mean(dim=(2, 3), dtype=dtype), scale[:, 0, 0])
        s = se_fc(pooled).to(dtype)[:, :, None, None]
        with torch.autocast(device_type=device, enabled=False):
            out = r.addcmul_(c, (scale * s).to(c.dtype)).add_((shift * s).to(c.dtype)).relu_()
        ctx.mark_dirty(r)
        ctx.save_for_backward(c, bn_weight, bn_bias, mean, invstd, pooled, out, *fc_params)
        ctx.se_fc, ctx.eps = se_fc, bn.eps
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        c, bn_weight, bn_bias, mean, invstd, pooled, out, *fc_params = ctx.saved_tensors
        device, dtype = c.device.type, pooled.dtype
        with torch.enable_grad(), torch.autocast(device_type=device, enabled=ctx.autocast[0], dtype=ctx.autocast[1]):
            pooled = pooled.detach().requires_grad_(True)
            s = ctx.se_fc(pooled).to(dtype)
        with torch.autocast(device_type=device, enabled=False):
            scale, shift = _bn_affine(bn_weight, bn_bias, mean, invstd, dtype)
            grad_sum = torch.ops.aten.threshold_backward(grad_out, out, 0)
            # d/ds of sum(grad_sum * b) with b = c * scale + shift, without materialising b
            grad_b = torch.mul(grad_sum, c)
            grad_s = grad_b.sum(dim=(2, 3), dtype=dtype) * scale[:, 0, 0]
            grad_s += grad_sum.sum(dim=(2, 3), dtype=dtype) * shift[:, 0, 0]
            wanted = [pooled] + [p for p, need in zip(fc_params, ctx.needs_input_grad[6:]) if need]
            grads = list(torch.autograd.grad(s, wanted, grad_s))
            grad_pooled = grads.pop(0) / (c.shape[2] * c.shape[3])
            fc_grads = [grads.pop(0) if need else None for need in ctx.needs_input_grad[6:]]
            torch.mul(grad_sum, s.detach()[:, :, None, None].to(c.dtype), out=grad_b)  # reuses the product's memory
            grad_b += grad_pooled[:, :, None, None].to(c.dtype)
            grad_c, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad_b, c, bn_weight, None, None, mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3])
            )
        return grad_c, grad_weight, grad_bias, grad_sum, None, None, *fc_grads


class _UpsampleConcatConv(torch.autograd.Function):
    """``c = conv([skip,] upsample2x(x))``, recomputing the upsampled (and concatenated) input in backward.

    Keeps ``x`` (low resolution) and ``skip`` (kept by the encoder anyway) instead of the
    full-resolution convolution input. Backward computes the weight gradient first and frees the
    recomputed input before the input gradient, and computes the input gradient only for the channels
    that need it (none for detached ``x`` and ``skip``, as in the teacher decoder's first level; only the
    upsampled channels for a detached ``skip``).
    """

    @staticmethod
    def forward(ctx, x, skip, conv_weight, conv):
        with torch.autocast(device_type=x.device.type, enabled=False):
            inputs = _upsample_concat(x, skip)
            c = F.conv2d(inputs, conv_weight.to(inputs.dtype), None, *_conv_args(conv))
        ctx.save_for_backward(x, skip, conv_weight)
        ctx.conv_args = _conv_args(conv)
        return c

    @staticmethod
    def backward(ctx, grad_c):
        x, skip, conv_weight = ctx.saved_tensors
        need_x, need_skip, need_weight = ctx.needs_input_grad[:3]
        skip_channels = 0 if skip is None else skip.shape[1]
        grad_x = grad_skip = grad_weight = None
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = conv_weight.to(grad_c.dtype)
            if need_weight:
                inputs = _upsample_concat(x, skip)
                grad_weight = _conv_weight_grad(grad_c, inputs, weight, ctx.conv_args).to(conv_weight.dtype)
                del inputs  # the full-resolution input never coexists with its gradient
            if need_skip or need_x:
                # gradient of the channels that need it only: all of them, or the upsampled ones without the skip
                first = 0 if need_skip else skip_channels
                shape = (x.shape[0], skip_channels + x.shape[1] - first, 2 * x.shape[2], 2 * x.shape[3])
                grad_inputs = _conv_input_grad(grad_c, shape, weight[:, first:], ctx.conv_args)
                if need_skip:
                    grad_skip, grad_inputs = grad_inputs.split([skip_channels, x.shape[1]], dim=1)
                if need_x:
                    grad_x = torch.ops.aten.upsample_bilinear2d_backward(
                        grad_inputs, list(grad_inputs.shape[-2:]), list(x.shape), False, None, None
                    ).to(x.dtype)
        return grad_x, grad_skip, grad_weight, None


def _upsample_concat(x: Tensor, skip: Tensor | None) -> Tensor:
    """Bilinear 2x upsampling of ``x`` (``align_corners=False``), then ``[skip, x]`` when a skip is given."""
    x = F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False)
    return x if skip is None else torch.cat([skip.to(x.dtype), x], dim=1)


class SEResBlock(nn.Module):
    """Residual block with channel-wise recalibration (HCASC's "double conv" with squeeze-and-excitation).

    ``y = conv3x3-BN-ReLU(x)`` (optionally strided), then
    ``out = ReLU(SE(conv3x3-BN-ReLU-conv3x3-BN(y)) + y)``. The SE layer is MONAI's
    :class:`~monai.networks.blocks.ChannelSELayer` with ``out_channels // se_reduction`` hidden units
    (at least 1).

    Training on the CPU (with autograd recording, plain ``nn.Conv2d``/``nn.BatchNorm2d`` layers) runs the
    same computation through fused memory-lean autograd functions: only the block input, the three
    convolution outputs and the block output are kept for backward, and the BatchNorm/ReLU/SE results are
    recomputed elementwise in backward. Training on any other device (CUDA, ...), with any other
    BatchNorm or convolution type (e.g. ``nn.SyncBatchNorm``) or without autograd runs the plain MONAI
    modules. In eval mode, on every device, each BatchNorm is folded into its convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (2 halves the spatial size).
        se_reduction: reduction ratio of the SE layer.
        recompute_first_conv: in the fused (CPU) training path, recompute the first convolution's output in
            backward instead of keeping it (worth it where ``in_channels`` is small, as in the stem).

    Shapes: ``N x in_channels x H x W`` -> ``N x out_channels x ceil(H / stride) x ceil(W / stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        se_reduction: int = 24,
        recompute_first_conv: bool = False,
    ) -> None:
        super().__init__()
        self.recompute_first_conv = recompute_first_conv
        self.conv_in = conv_norm_act(in_channels, out_channels, stride=stride)
        self.conv_body = nn.Sequential(
            conv_norm_act(out_channels, out_channels), conv_norm_act(out_channels, out_channels, act=False)
        )
        self.se = ChannelSELayer(spatial_dims=2, in_channels=out_channels, r=min(se_reduction, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        if _lean_training(self, x):
            if not self.recompute_first_conv:
                return self.forward_from_conv(self.conv_in.conv(x))
            conv_in, bn1, conv2 = self.conv_in.conv, self.conv_in.adn.N, self.conv_body[0].conv
            c2, shortcut = _ConvBatchNormReLUConv.apply(
                x, conv_in.weight, bn1.weight, bn1.bias, conv2.weight, conv_in, bn1, conv2
            )
            return self._tail(c2, shortcut)
        if _folded_inference(self):
            shortcut = _conv_bn_folded(self.conv_in, x).relu_()
            out = _conv_bn_folded(self.conv_body[1], _conv_bn_folded(self.conv_body[0], shortcut).relu_())
            # the SE layer's ``out * fc(mean(out))``, added to the shortcut in one pass
            scale = self.se.fc(out.mean(dim=(2, 3)))[:, :, None, None]
            return shortcut.addcmul_(out, scale).relu_()
        shortcut = self.conv_in(x)
        out = self.conv_body(shortcut)
        return self.se(out).add_(shortcut).relu_()

    def forward_from_conv(self, c1: Tensor) -> Tensor:
        """Fused (CPU) training computation from the first convolution's output ``c1`` (before its BN)."""
        bn1, conv2 = self.conv_in.adn.N, self.conv_body[0].conv
        c2, shortcut = _BatchNormReLUConv.apply(c1, bn1.weight, bn1.bias, conv2.weight, bn1, conv2, True)
        return self._tail(c2, shortcut)

    def _tail(self, c2: Tensor, shortcut: Tensor) -> Tensor:
        """Fused (CPU) training computation from the second convolution's output ``c2`` and the shortcut."""
        bn2, conv3 = self.conv_body[0].adn.N, self.conv_body[1].conv
        bn3 = self.conv_body[1].adn.N
        c3 = _BatchNormReLUConv.apply(c2, bn2.weight, bn2.bias, conv3.weight, bn2, conv3, False)
        fc = self.se.fc
        return _BatchNormSEAddReLU.apply(c3, bn3.weight, bn3.bias, shortcut, bn3, fc, *fc.parameters())


class UpBlock(nn.Module):
    """Decoder level: bilinear 2x upsampling, skip operation, then :class:`SEResBlock`.

    Where the block takes the fused training path (see :class:`SEResBlock`), the upsampled (and concatenated)
    input is recomputed in backward instead of kept.

    Args:
        in_channels: channels of the input feature.
        skip_channels: channels of the skip feature (used by ``op="concat"`` only).
        out_channels: output channels.
        op: ``"concat"`` concatenates ``[skip, upsampled]``; ``"none"`` has no skip, so the shallow
            levels cannot copy the input.
        se_reduction: reduction ratio of the SE layer.

    Shapes: ``x: N x in_channels x h x w``, ``skip: N x skip_channels x 2h x 2w`` (``None`` for ``"none"``)
    -> ``N x out_channels x 2h x 2w``.
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

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if (skip is None) == (self.op == "concat"):
            raise ValueError(f"op {self.op!r} {'needs' if skip is None else 'takes no'} skip feature.")
        if _lean_training(self.block, x):
            conv = self.block.conv_in.conv
            return self.block.forward_from_conv(_UpsampleConcatConv.apply(x, skip, conv.weight, conv))
        return self.block(_upsample_concat(x, skip))
