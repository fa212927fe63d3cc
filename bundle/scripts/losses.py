"""SimSID/HCASC training losses: the generator's named terms and the discriminator loss.

Both losses compute in fp32 with autocast disabled locally, so they can be called inside a bf16/fp16
autocast region (SSIM's variance terms cancel catastrophically in low precision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["distillation_loss", "SeparableSSIMLoss", "GeneratorLoss", "DiscriminatorLoss"]


def distillation_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Sum over decoder levels of the MSE between student and teacher features (0 when there are none)."""
    if len(student) != len(teacher):
        raise ValueError(f"need one teacher feature per student feature, got {len(student)} and {len(teacher)}.")
    if not student:
        return torch.zeros(())
    return torch.stack([F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher)]).sum()


class SeparableSSIMLoss(nn.Module):
    """``1 - SSIM`` with a Gaussian window, computed with two 1D (separable) window passes.

    The same loss as MONAI's :class:`~monai.losses.SSIMLoss` (``spatial_dims=2``, Gaussian kernel, valid
    convolution, mean over the batch of ``1 - mean SSIM map``): the 2D Gaussian window is the outer product
    of two normalised 1D windows, so filtering the five statistics ``x, y, x^2, y^2, xy`` along the rows and
    then the columns (one depthwise convolution each, all statistics at once) equals MONAI's five 2D
    convolutions, with ``2k`` instead of ``k^2`` multiplications per pixel.

    Args:
        data_range: value range of the images.
        win_size: Gaussian window size (odd).
        kernel_sigma: Gaussian window sigma.
        k1: luminance constant.
        k2: contrast constant.

    Shapes: ``input, target: B x C x H x W`` with ``H, W >= win_size`` -> scalar.
    """

    window: Tensor

    def __init__(
        self, data_range: float = 1.0, win_size: int = 11, kernel_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
    ) -> None:
        super().__init__()
        offsets = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2
        window = torch.exp(-0.5 * (offsets / kernel_sigma) ** 2)
        self.register_buffer("window", (window / window.sum()).float(), persistent=False)
        self.c1 = (k1 * data_range) ** 2
        self.c2 = (k2 * data_range) ** 2

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape != target.shape:
            raise ValueError(f"input and target need the same shape, got {input.shape} and {target.shape}.")
        stats = torch.cat([input, target, input * input, target * target, input * target], dim=1)
        channels, size = stats.shape[1], self.window.numel()
        window = self.window.to(stats)
        stats = F.conv2d(stats, window.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
        stats = F.conv2d(stats, window.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
        mu_x, mu_y, mu_xx, mu_yy, mu_xy = stats.chunk(5, dim=1)
        mu_x2, mu_y2, mu_x_mu_y = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        contrast = (2 * (mu_xy - mu_x_mu_y) + self.c2) / (mu_xx - mu_x2 + mu_yy - mu_y2 + self.c2)
        ssim_map = (2 * mu_x_mu_y + self.c1) / (mu_x2 + mu_y2 + self.c1) * contrast
        return 1 - ssim_map.mean()


class GeneratorLoss(nn.Module):
    """Weighted sum of the generator's terms; every term is also returned unweighted.

    ``total = recon_weight * MSE(recon, x) + ssim_weight * (1 - SSIM(recon, x))
    + teacher_weight * MSE(teacher_recon, x) + distill_weight * sum_l MSE(student_l, teacher_l)
    + adv_weight * BCEWithLogits(D(recon), 1)``.

    The default weights are the SimSID/HCASC ZhangLab settings. The SSIM weight 0.5 is HCASC's: its
    reference code (``main.py``, ``ssl_loss``) adds ``mean((1 - SSIM map) / 2)`` with weight 1, i.e. 0.5 on
    ``1 - SSIM``; here the term is :class:`SeparableSSIMLoss` (MONAI's :class:`~monai.losses.SSIMLoss`:
    ``1 - SSIM``, Gaussian window, valid convolution, computed separably), and it is always part of the
    generator loss.

    Args:
        recon_weight: weight of the reconstruction MSE.
        ssim_weight: weight of ``1 - SSIM``.
        teacher_weight: weight of the teacher reconstruction MSE.
        distill_weight: weight of the feature distillation.
        adv_weight: weight of the adversarial term.
        ssim_kernel_size: Gaussian window size of SSIM.
        ssim_sigma: Gaussian window sigma of SSIM.
        ssim_k1: SSIM luminance constant.
        ssim_k2: SSIM contrast constant.
    """

    def __init__(
        self,
        recon_weight: float = 10.0,
        ssim_weight: float = 0.5,
        teacher_weight: float = 0.01,
        distill_weight: float = 0.001,
        adv_weight: float = 0.002,
        ssim_kernel_size: int = 11,
        ssim_sigma: float = 1.5,
        ssim_k1: float = 0.01,
        ssim_k2: float = 0.03,
    ) -> None:
        super().__init__()
        self.weights = {
            "recon": recon_weight,
            "ssim": ssim_weight,
            "teacher": teacher_weight,
            "distill": distill_weight,
            "adv": adv_weight,
        }
        self.ssim = SeparableSSIMLoss(
            data_range=1.0, win_size=ssim_kernel_size, kernel_sigma=ssim_sigma, k1=ssim_k1, k2=ssim_k2
        )

    def forward(
        self, outputs: Mapping[str, Tensor | list[Tensor]], target: Tensor, fake_logits: Tensor
    ) -> dict[str, Tensor]:
        """
        Args:
            outputs: the generator's training output: ``"recon"`` (``B x C x H x W``), optionally
                ``"teacher_recon"`` (same shape) and either ``"distill"`` (the distillation loss, a scalar, as
                :class:`~scripts.networks.SimSIDGenerator` computes it) or ``"student_features"``/
                ``"teacher_features"`` to compute it from.
            target: ``B x C x H x W`` input images in [0, 1].
            fake_logits: ``B x 1`` discriminator logits of ``outputs["recon"]``.

        Returns:
            ``"recon"``, ``"ssim"``, ``"teacher"``, ``"distill"``, ``"adv"`` (unweighted, 0 where the output
            lacks the term) and ``"total"`` (weighted sum), each a scalar.
        """
        with torch.autocast(device_type=target.device.type, enabled=False):
            target = target.float()
            recon = outputs["recon"].float()
            zero = recon.new_zeros(())
            terms = {"recon": F.mse_loss(recon, target), "ssim": self.ssim(recon, target)}
            teacher = outputs.get("teacher_recon")
            terms["teacher"] = F.mse_loss(teacher.float(), target) if isinstance(teacher, Tensor) else zero
            student_features = outputs.get("student_features", [])
            teacher_features = outputs.get("teacher_features", [])
            if isinstance(outputs.get("distill"), Tensor):  # computed by the generator as its features were made
                terms["distill"] = outputs["distill"].float()
            elif teacher_features:
                terms["distill"] = distillation_loss(student_features, teacher_features).to(zero)
            else:
                terms["distill"] = zero
            fake_logits = fake_logits.float()
            terms["adv"] = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
            terms["total"] = sum((self.weights[k] * v for k, v in terms.items()), zero)
        return terms


class DiscriminatorLoss(nn.Module):
    """``weight * [BCEWithLogits(D(x), 1) + BCEWithLogits(D(G(x)), 0)]`` (SimSID's ``d_w``, default 0.005).

    Args:
        weight: overall weight.
    """

    def __init__(self, weight: float = 0.005) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """``real_logits``/``fake_logits``: ``B x 1`` logits of real and generated images -> scalar loss."""
        with torch.autocast(device_type=real_logits.device.type, enabled=False):
            real_logits, fake_logits = real_logits.float(), fake_logits.float()
            real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return self.weight * (real + fake)
