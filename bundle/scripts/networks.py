"""SimSID/HCASC networks: the memory-in-painting generator and the image discriminator.

The generator reconstructs *normal* anatomy: patchify -> SE-ResNet encoder -> in-painting block
(space-aware memory queue + transformer over the 3x3 patch neighbourhood) -> decoder with
hierarchical learnable memories -> sigmoid image. A teacher decoder (training only) reconstructs
from the detached encoder features and distils its features into the student decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Norm
from torch import Tensor, nn

from .blocks import SEResBlock, UpBlock, binary_position_code, conv_norm_act, patchify, unpatchify
from .memory import DecoderMemory, SpaceAwareMemoryQueue
from .losses import distillation_loss

__all__ = ["neighbour_index", "InpaintBlock", "Decoder", "SimSIDGenerator", "Discriminator"]


def neighbour_index(num_patch: int) -> Tensor:
    """Indices of the 8 neighbours (3x3 neighbourhood without its centre) of every patch position.

    Positions are row-major on the ``num_patch x num_patch`` grid; a neighbour beyond the border gets the
    index ``P = num_patch ** 2``, meant to address an extra all-zero row.

    Returns:
        ``P x 8`` long tensor.
    """
    rows = []
    for r in range(num_patch):
        for c in range(num_patch):
            row = []
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if dr == 0 and dc == 0:
                        continue
                    nr, nc = r + dr, c + dc
                    inside = 0 <= nr < num_patch and 0 <= nc < num_patch
                    row.append(nr * num_patch + nc if inside else num_patch * num_patch)
            rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


class InpaintBlock(nn.Module):
    """Feature in-painting on the bottleneck with the space-aware memory queue.

    Per patch: 1x1 conv-BN-ReLU to ``inpaint_channels`` and flatten to a query ``q`` of
    ``D = inpaint_channels * h * w``; read ``m`` from the patch position's queue; multi-head attention
    with query ``q`` over the memory outputs of the 8 neighbouring patches (zeros beyond the border);
    ``h = ReLU(LN(attn) + m)``, ``h = ReLU(LN(FF(h)) + h)``; reshape, append the binary position code as
    constant channels, 1x1 conv-BN-ReLU back to ``in_channels``. In training a per-pixel
    Bernoulli(``mask_ratio``) mask keeps the in-painted feature, elsewhere the input passes through.

    Args:
        in_channels: channels of the bottleneck feature.
        inpaint_channels: channels after the 1x1 reduction.
        spatial_size: ``(h, w)`` of the bottleneck feature of one patch.
        num_patch: patches per image side.
        num_slots: queue length per position.
        shrink_thres: sparse addressing of the queue, see :func:`scripts.memory.shrink_weights`.
        num_heads: attention heads; must divide ``D``.
        dropout: dropout of the feed-forward layers.
        mask_ratio: probability that a pixel takes the in-painted feature in training.

    Shapes: ``(B * P) x in_channels x h x w`` -> (same, ``B x P x D`` detached queries).
    """

    def __init__(
        self,
        in_channels: int,
        inpaint_channels: int,
        spatial_size: tuple[int, int],
        num_patch: int,
        num_slots: int,
        shrink_thres: float = 5,
        num_heads: int = 8,
        dropout: float = 0.0,
        mask_ratio: float = 0.95,
    ) -> None:
        super().__init__()
        self.num_positions = num_patch * num_patch
        self.inpaint_channels = inpaint_channels
        self.mask_ratio = mask_ratio
        dim = inpaint_channels * spatial_size[0] * spatial_size[1]
        self.dim = dim
        self.reduce = conv_norm_act(in_channels, inpaint_channels, kernel_size=1)
        self.queue = SpaceAwareMemoryQueue(self.num_positions, num_slots, dim, shrink_thres)
        self.register_buffer("neighbours", neighbour_index(num_patch), persistent=False)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, dim // 4),
            nn.Dropout(dropout),
            nn.ReLU(inplace=True),
            nn.Linear(dim // 4, dim),
            nn.Dropout(dropout),
        )
        self.ff_norm = nn.LayerNorm(dim)
        code = binary_position_code(self.num_positions)
        self.register_buffer("position_code", code, persistent=False)
        self.expand = conv_norm_act(inpaint_channels + code.shape[1], in_channels, kernel_size=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        p, dim = self.num_positions, self.dim
        b = n // p
        queries = self.reduce(x).reshape(b, p, dim)
        mem = self.queue(queries).to(queries.dtype)
        hidden = torch.relu(self.attn_norm(self.attend_neighbours(queries, mem)) + mem)
        hidden = torch.relu(self.ff_norm(self.ff(hidden)) + hidden)
        code = self.position_code.to(hidden.dtype)[None, :, :, None, None].expand(b, -1, -1, h, w)
        feature = torch.cat([hidden.reshape(b, p, self.inpaint_channels, h, w), code], dim=2)
        out = self.expand(feature.reshape(n, -1, h, w))
        if self.training:
            out = torch.where(torch.rand(n, 1, h, w, device=x.device) < self.mask_ratio, out, x)
        return out, queries.detach()

    def attend_neighbours(self, queries: Tensor, mem: Tensor) -> Tensor:
        """``self.attention`` of every patch's query over the memory outputs of its 8 neighbours.

        Equals ``self.attention(q, context, context)`` with ``context`` the gathered ``(B * P) x 8 x D``
        neighbourhoods (zero vectors beyond the border), but projects the keys and values once per
        patch instead of once per neighbourhood the patch belongs to (8x less work for that projection);
        a zero vector projects to the bias.

        Shapes: ``queries, mem: B x P x D`` -> ``B x P x D``.
        """
        attn = self.attention
        b, p, dim = queries.shape
        heads = attn.num_heads
        w_q, w_kv = attn.in_proj_weight.split([dim, 2 * dim])
        b_q, b_kv = attn.in_proj_bias.split([dim, 2 * dim])
        q = F.linear(queries, w_q, b_q)
        kv = F.linear(mem, w_kv, b_kv)
        kv = torch.cat([kv, b_kv.to(kv.dtype).expand(b, 1, 2 * dim)], dim=1)[:, self.neighbours]  # B x P x 8 x 2D
        k, v = (t.reshape(b * p, -1, heads, dim // heads).transpose(1, 2) for t in kv.chunk(2, dim=-1))
        q = q.reshape(b * p, 1, heads, dim // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout if self.training else 0.0)
        return attn.out_proj(out.transpose(1, 2).reshape(b, p, dim))


class Decoder(nn.Module):
    """``level`` up blocks (deepest first), optional memory after each, 1x1 conv and sigmoid.

    Patches are reassembled into whole images before the first level whose skip is a whole image
    (``initial_combine`` levels from the top), or at the end when ``initial_combine == 0``.

    Args:
        features: channels per encoder depth, ``features[0]`` (stem) .. ``features[level]`` (bottleneck).
        out_channels: image channels.
        num_patch: patches per image side.
        initial_combine: number of shallow levels whose skips are whole images.
        ops: skip operation per level, deepest first (see :class:`scripts.blocks.UpBlock`).
        se_reduction: reduction ratio of the SE layers.
        memories: one module per level, deepest first, applied after that level's up block.

    Shapes: ``x: (B * P) x features[level] x h x w``, ``skips[i]``: encoder feature before down block ``i``
    (``None`` where the level's op is ``"none"``) -> (``B x out_channels x H x W`` image, list of ``level``
    decoder features, deepest first, distillation loss).
    ``memory_format`` is the layout the features are kept in. With ``distill_targets`` (another decoder's
    features, deepest first) the distillation loss ``sum_l MSE(distill_targets[l], features[l])`` is computed
    level by level as each feature is made (``None`` without targets): its backward then runs level by level
    too, instead of materialising the gradients of every level's features at once at the start of backward.
    """

    def __init__(
        self,
        features: Sequence[int],
        out_channels: int,
        num_patch: int,
        initial_combine: int,
        ops: Sequence[str],
        se_reduction: int = 24,
        memories: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        level = len(features) - 1
        self.num_patch = num_patch
        self.combine_at = level - initial_combine
        self.ups = nn.ModuleList(
            UpBlock(features[level - i], features[level - 1 - i], features[level - 1 - i], op, se_reduction)
            for i, op in enumerate(ops)
        )
        self.memories = nn.ModuleList(memories if memories is not None else [nn.Identity() for _ in ops])
        self.head = nn.Conv2d(features[0], out_channels, kernel_size=1)

    def forward(
        self,
        x: Tensor,
        skips: Sequence[Tensor | None],
        memory_format: torch.memory_format = torch.contiguous_format,
        distill_targets: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        level = len(self.ups)
        if distill_targets is not None and len(distill_targets) != level:
            raise ValueError(f"need one distillation target per decoder level ({level}), got {len(distill_targets)}.")
        features, distill = [], None
        for i, (up, memory) in enumerate(zip(self.ups, self.memories)):
            if i == self.combine_at:
                x = unpatchify(x, self.num_patch, memory_format)
            x = memory(up(x, skips[level - 1 - i])).contiguous(memory_format=memory_format)
            features.append(x)
            if distill_targets is not None:
                term = distillation_loss([distill_targets[i]], [x])
                distill = term if distill is None else distill + term
        if self.combine_at == level:
            x = unpatchify(x, self.num_patch, memory_format)
        return torch.sigmoid(self.head(x)), features, distill


class SimSIDGenerator(nn.Module):
    """SimSID/HCASC generator (space-aware memory in-painting with SE-ResNet encoder/decoder).

    Every size derives from the arguments: ``img_size`` must be divisible by ``num_patch * 2 ** level``.

    Args:
        img_size: side of the square input image.
        num_patch: patches per side (``P = num_patch ** 2`` positions).
        level: number of down (and up) blocks.
        in_channels: image channels.
        features_root: stem channels; depth ``i`` has ``features_root * 2 ** i``.
        initial_combine: number of shallow encoder levels whose skips are whole images.
        num_slots: queue length per patch position.
        shrink_thres: sparse addressing of all memories: ``int`` k -> top-k, ``float`` -> hard shrinkage.
        se_reduction: reduction ratio of the squeeze-and-excitation layers.
        ops: skip operation per decoder level, deepest first (``"concat"`` or ``"none"``).
        decoder_memory: per decoder level, deepest first: ``"memory"`` adds a learnable memory block.
        mem_num_slots: slots per decoder memory.
        num_memory: spatial windows per decoder memory block (a square number).
        mask_ratio: keep-probability of the in-painted bottleneck (masked shortcut, training only).
        memory_mask_ratio: keep-probability of the decoder memory outputs (training only).
        inpaint_channels: channels of the in-painting block.
        num_heads: heads of the in-painting attention.
        dropout: dropout in the in-painting feed-forward layers.
        dist: build the teacher decoder and distil it into the student decoder (training only).
        channels_last: keep activations channels-last (the layout fast CPU convolution and upsampling
            kernels use); ``False`` keeps PyTorch's default channels-first layout. Results are the same.

    ``forward(x)`` with ``x: B x in_channels x img_size x img_size`` in [0, 1] returns
    ``{"recon": B x in_channels x H x W}`` in eval mode (``forward(x, feature_depth=d)`` adds ``"features"``, the
    encoder output at depth ``d`` as whole images, ``B x features[d] x H / 2**d x W / 2**d``; ``features`` lists
    the channels per depth, 0 the stem); in training also ``"teacher_recon"`` (if ``dist``),
    ``"student_features"``/``"teacher_features"`` (lists of decoder features, deepest first; the teacher's
    empty without ``dist``), ``"distill"`` (if ``dist``: the distillation loss over those lists, computed
    level by level in the teacher pass, see :class:`Decoder`) and ``"queries"`` (``B x P x D`` detached queue queries, to be passed to
    :meth:`write_memory` after the optimiser step).
    """

    def __init__(
        self,
        img_size: int = 128,
        num_patch: int = 2,
        level: int = 4,
        in_channels: int = 1,
        features_root: int = 32,
        initial_combine: int = 2,
        num_slots: int = 200,
        shrink_thres: float = 5,
        se_reduction: int = 24,
        ops: Sequence[str] = ("concat", "concat", "none", "none"),
        decoder_memory: Sequence[str] = ("memory", "memory", "none", "none"),
        mem_num_slots: int = 200,
        num_memory: int = 4,
        mask_ratio: float = 0.95,
        memory_mask_ratio: float = 0.95,
        inpaint_channels: int = 128,
        num_heads: int = 8,
        dropout: float = 0.0,
        dist: bool = True,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if len(ops) != level or len(decoder_memory) != level:
            raise ValueError(f"ops and decoder_memory need one entry per level ({level}), got {ops}, {decoder_memory}.")
        if not 0 <= initial_combine <= level:
            raise ValueError(f"initial_combine must be in [0, {level}], got {initial_combine}.")
        if img_size % (num_patch * 2**level):
            raise ValueError(f"img_size {img_size} must be divisible by num_patch * 2**level = {num_patch * 2**level}.")
        self.num_patch = num_patch
        self.initial_combine = initial_combine
        self.channels_last = channels_last
        self.skip_used = [ops[level - 1 - i] == "concat" for i in range(level)]
        features = [features_root * 2**i for i in range(level + 1)]
        self.features = features
        patch_size = img_size // num_patch

        self.stem = SEResBlock(in_channels, features[0], se_reduction=se_reduction, recompute_first_conv=True)
        self.downs = nn.ModuleList(
            SEResBlock(features[i], features[i + 1], stride=2, se_reduction=se_reduction) for i in range(level)
        )
        bottleneck = patch_size // 2**level
        self.inpaint = InpaintBlock(
            features[level],
            inpaint_channels,
            (bottleneck, bottleneck),
            num_patch,
            num_slots,
            shrink_thres=shrink_thres,
            num_heads=num_heads,
            dropout=dropout,
            mask_ratio=mask_ratio,
        )
        memories: list[nn.Module] = []
        for i, kind in enumerate(decoder_memory):
            depth = level - 1 - i
            size = patch_size // 2**depth * (num_patch if depth < initial_combine else 1)
            if kind == "memory":
                memories.append(
                    DecoderMemory(
                        num_memory, mem_num_slots, features[depth], (size, size), shrink_thres, memory_mask_ratio
                    )
                )
            elif kind == "none":
                memories.append(nn.Identity())
            else:
                raise ValueError(f"decoder_memory entries must be 'memory' or 'none', got {kind!r}.")
        self.decoder = Decoder(features, in_channels, num_patch, initial_combine, ops, se_reduction, memories)
        self.teacher = Decoder(features, in_channels, num_patch, initial_combine, ops, se_reduction) if dist else None

    def encode(
        self, x: Tensor, memory_format: torch.memory_format = torch.contiguous_format, feature_depth: int | None = None
    ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """``B x C x H x W`` -> (``(B * P) x F x h x w`` bottleneck, skips before every down block, the encoder
        output at ``feature_depth`` as whole images or ``None``).

        Skips of decoder levels with ``op="none"`` are not materialised (``None``).
        """
        x = self.stem(patchify(x, self.num_patch, memory_format))
        feature = unpatchify(x, self.num_patch) if feature_depth == 0 else None
        skips: list[Tensor | None] = []
        for i, down in enumerate(self.downs):
            if not self.skip_used[i]:
                skips.append(None)
            else:
                skips.append(unpatchify(x, self.num_patch, memory_format) if i < self.initial_combine else x)
            x = down(x)
            if feature_depth == i + 1:
                feature = unpatchify(x, self.num_patch)
        return x, skips, feature

    def _check_feature_depth(self, feature_depth: int) -> None:
        if not 0 <= feature_depth < len(self.features):
            raise ValueError(f"feature_depth must be in [0, {len(self.features) - 1}], got {feature_depth}.")

    def encoder_feature(self, x: Tensor, feature_depth: int) -> Tensor:
        """The encoder output at ``feature_depth`` alone (what ``forward(x, feature_depth)`` returns as
        ``"features"``), running only the blocks up to that depth: ``B x features[d] x H / 2**d x W / 2**d``."""
        self._check_feature_depth(feature_depth)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = self.stem(patchify(x, self.num_patch, memory_format))
        for down in self.downs[:feature_depth]:
            x = down(x)
        return unpatchify(x, self.num_patch)

    def forward(self, x: Tensor, feature_depth: int | None = None) -> dict[str, Tensor | list[Tensor]]:
        if feature_depth is not None:
            self._check_feature_depth(feature_depth)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        bottleneck, skips, feature = self.encode(x, memory_format, feature_depth)
        inpainted, queries = self.inpaint(bottleneck)
        inpainted = inpainted.contiguous(memory_format=memory_format)
        recon, student_features, _ = self.decoder(inpainted, skips, memory_format)
        recon = recon.contiguous()
        if not self.training:
            return {"recon": recon} if feature is None else {"recon": recon, "features": feature}
        out: dict[str, Tensor | list[Tensor]] = {
            "recon": recon,
            "student_features": student_features,
            "queries": queries,
        }
        teacher_features: list[Tensor] = []
        if self.teacher is not None:
            detached = [None if s is None else s.detach() for s in skips]
            teacher_recon, teacher_features, distill = self.teacher(
                bottleneck.detach(), detached, memory_format, distill_targets=student_features
            )
            out["teacher_recon"] = teacher_recon.contiguous()
            out["distill"] = distill
        out["teacher_features"] = teacher_features
        return out

    @torch.no_grad()
    def write_memory(self, queries: Tensor) -> None:
        """FIFO-write ``B x P x D`` queries (``forward(x)["queries"]``) into every position's queue."""
        self.inpaint.queue.write(queries)


class Discriminator(nn.Module):
    """Image discriminator: strided conv-(BN)-LeakyReLU(0.2) layers, then a linear layer to one logit.

    Every layer halves the size (stride 2, "same" padding); the first has no BatchNorm.

    Args:
        img_size: side of the square input image.
        in_channels: image channels.
        channels: output channels of the conv layers.
        kernel_size: conv kernel size (odd).

    Shapes: ``B x in_channels x img_size x img_size`` -> ``B x 1`` logits.
    """

    def __init__(
        self,
        img_size: int = 128,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        layers = []
        size = img_size
        for i, out_channels in enumerate(channels):
            layers.append(
                Convolution(
                    spatial_dims=2,
                    in_channels=in_channels if i == 0 else channels[i - 1],
                    out_channels=out_channels,
                    strides=2,
                    kernel_size=kernel_size,
                    act=("leakyrelu", {"negative_slope": 0.2, "inplace": True}),
                    norm=Norm.BATCH if i > 0 else None,
                )
            )
            size = (size - 1) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels[-1] * size * size, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
