"""Tests of the SimSID/HCASC generator and discriminator losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai.losses import SSIMLoss

from scripts.losses import DiscriminatorLoss, GeneratorLoss, SeparableSSIMLoss, distillation_loss

structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity


def _outputs(seed: int = 0, batch: int = 2, size: int = 32, teacher: bool = True) -> tuple[dict, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 1, size, size, generator=gen)
    outputs = {"recon": (target + 0.1 * torch.randn(target.shape, generator=gen)).clamp(0, 1)}
    if teacher:
        outputs["teacher_recon"] = torch.rand(target.shape, generator=gen)
        for key in ("student_features", "teacher_features"):
            outputs[key] = [torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 2, 16, 16, generator=gen)]
    return outputs, target


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM over the batch, Gaussian window sigma 1.5 (11 wide), population statistics, data range 1."""
    values = [
        structural_similarity(
            x[0].numpy().astype(np.float64),
            y[0].numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for x, y in zip(a, b)
    ]
    return float(np.mean(values))


def test_generator_loss_terms_match_independent_formulas():
    outputs, target = _outputs()
    fake_logits = torch.tensor([[0.3], [-1.2]])
    terms = GeneratorLoss()(outputs, target, fake_logits)
    assert set(terms) == {"recon", "ssim", "teacher", "distill", "adv", "total"}
    assert math.isclose(float(terms["recon"]), float(((outputs["recon"] - target) ** 2).mean()), rel_tol=1e-5)
    assert math.isclose(float(terms["teacher"]), float(((outputs["teacher_recon"] - target) ** 2).mean()), rel_tol=1e-5)
    pairs = zip(outputs["student_features"], outputs["teacher_features"])
    distill = sum(float(((s - t) ** 2).mean()) for s, t in pairs)
    assert math.isclose(float(terms["distill"]), distill, rel_tol=1e-5)
    adv = float(np.mean([-math.log(1 / (1 + math.exp(-v))) for v in (0.3, -1.2)]))
    assert math.isclose(float(terms["adv"]), adv, rel_tol=1e-5)
    ssim = _skimage_ssim(outputs["recon"], target)
    assert abs(float(terms["ssim"]) - (1.0 - ssim)) < 1e-4


def test_generator_loss_total_is_weighted_sum():
    outputs, target = _outputs(seed=3)
    fake_logits = torch.randn(2, 1)
    weights = dict(recon_weight=2.0, ssim_weight=3.0, teacher_weight=5.0, distill_weight=7.0, adv_weight=11.0)
    terms = GeneratorLoss(**weights)(outputs, target, fake_logits)
    names = ("recon", "ssim", "teacher", "distill", "adv")
    expected = sum(w * float(terms[k]) for k, w in zip(names, weights.values()))
    assert math.isclose(float(terms["total"]), expected, rel_tol=1e-5)


def test_generator_loss_default_weights_are_the_reference_settings():
    loss = GeneratorLoss()
    assert loss.weights == {"recon": 10.0, "ssim": 0.5, "teacher": 0.01, "distill": 0.001, "adv": 0.002}


def test_generator_loss_without_teacher_and_perfect_reconstruction():
    outputs, target = _outputs(teacher=False)
    outputs["recon"] = target.clone()
    terms = GeneratorLoss()(outputs, target, torch.full((2, 1), 30.0))
    for name in ("recon", "teacher", "distill"):
        assert float(terms[name]) == 0.0
    assert abs(float(terms["ssim"])) < 1e-5
    assert float(terms["adv"]) < 1e-10
    # an empty teacher list (generator built with dist=False) also gives no distillation
    outputs.update(student_features=[torch.ones(2, 3)], teacher_features=[])
    assert float(GeneratorLoss()(outputs, target, torch.zeros(2, 1))["distill"]) == 0.0


def _cast(outputs: dict, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if torch.is_tensor(v) else [t.to(dtype) for t in v]) for k, v in outputs.items()}


def test_generator_loss_gradient_and_fp32_under_autocast():
    outputs, target = _outputs(seed=5)
    recon = outputs["recon"].clone().requires_grad_(True)
    fake_logits = torch.randn(2, 1, requires_grad=True)
    GeneratorLoss()({**outputs, "recon": recon}, target, fake_logits)["total"].backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert fake_logits.grad is not None and fake_logits.grad.abs().sum() > 0
    low = _cast(outputs, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = GeneratorLoss()(low, target, fake_logits.detach())
    assert all(v.dtype == torch.float32 for v in terms.values())
    # the same bf16 inputs, computed in fp32 without autocast
    exact = GeneratorLoss()(_cast(low, torch.float32), target, fake_logits.detach())
    for name in terms:
        assert torch.allclose(terms[name], exact[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "shape, win_size, sigma, data_range, k1, k2",
    [
        ((3, 1, 40, 33), 11, 1.5, 1.0, 0.01, 0.03),
        ((2, 2, 24, 24), 7, 1.0, 2.0, 0.02, 0.05),
        ((1, 3, 16, 20), 5, 0.8, 1.0, 0.01, 0.03),
    ],
)
def test_separable_ssim_equals_monai_ssim_loss(shape, win_size, sigma, data_range, k1, k2):
    gen = torch.Generator().manual_seed(11)
    target = torch.rand(shape, generator=gen) * data_range
    pred = (target + 0.2 * data_range * torch.randn(shape, generator=gen)).requires_grad_(True)
    monai_loss = SSIMLoss(
        spatial_dims=2, data_range=data_range, win_size=win_size, kernel_sigma=sigma, k1=k1, k2=k2
    )(pred, target)
    (monai_grad,) = torch.autograd.grad(monai_loss, pred)
    loss = SeparableSSIMLoss(data_range=data_range, win_size=win_size, kernel_sigma=sigma, k1=k1, k2=k2)(pred, target)
    (grad,) = torch.autograd.grad(loss, pred)
    assert 0.05 < float(monai_loss) < 1.5
    assert abs(float(loss) - float(monai_loss)) < 1e-5
    assert torch.allclose(grad, monai_grad, rtol=1e-4, atol=1e-5 * float(monai_grad.abs().max()))
    with pytest.raises(ValueError):
        SeparableSSIMLoss()(pred, target[:, :, 1:])


def test_generator_loss_takes_a_precomputed_distillation_term():
    outputs, target = _outputs()
    fake_logits = torch.zeros(2, 1)
    precomputed = torch.tensor(0.125, requires_grad=True)
    terms = GeneratorLoss(distill_weight=2.0)({**outputs, "distill": precomputed}, target, fake_logits)
    assert float(terms["distill"]) == 0.125  # not recomputed from the feature lists
    terms["total"].backward()
    assert float(precomputed.grad) == 2.0


def test_distillation_loss_checks_lengths():
    with pytest.raises(ValueError):
        distillation_loss([torch.ones(1)], [])


def test_discriminator_loss():
    real, fake = torch.tensor([[1.5], [-0.5]]), torch.tensor([[0.2], [-2.0]])
    loss = DiscriminatorLoss(weight=0.25)(real, fake)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = 0.25 * (np.mean([softplus(-1.5), softplus(0.5)]) + np.mean([softplus(0.2), softplus(-2.0)]))
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    zeros = torch.zeros(4, 1)
    assert math.isclose(float(DiscriminatorLoss()(zeros, zeros)), 0.005 * 2 * math.log(2), rel_tol=1e-6)
    perfect = DiscriminatorLoss()(torch.full((4, 1), 40.0), torch.full((4, 1), -40.0))
    assert float(perfect) < 1e-12
