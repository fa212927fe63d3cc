"""The deployable anomaly detector: generator + discriminator + the score statistics and threshold."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SCORE_KINDS", "ScoreStatistics", "AnomalyDetector"]

SCORE_KINDS = ("discriminator", "reconstruction")


class ScoreStatistics(nn.Module):
    """Score-normalisation statistics and the decision threshold, kept as buffers (no parameters).

    ``mean``/``std`` hold one value per raw score, index 0 the discriminator logit and index 1 the
    reconstruction error, measured over normal training images; ``ready`` says whether they were measured;
    ``threshold`` is the decision threshold on the normalised anomaly score of the detector's kind.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("std", torch.ones(2))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("threshold", torch.full((), 0.5))

    def update(self, disc_logit: torch.Tensor, recon_error: torch.Tensor) -> None:
        """Measure the statistics from raw scores of N training images (each of shape N)."""
        raw = torch.stack([disc_logit.float(), recon_error.float()]).to(self.mean.device)
        self.mean.copy_(raw.mean(1))
        self.std.copy_(raw.std(1, unbiased=raw.shape[1] > 1).clamp_min(1e-6))
        self.ready.fill_(True)


class AnomalyDetector(nn.Module):
    """Scores chest radiographs with a trained SimSID generator and discriminator.

    Two image scores are offered (``../docs/README.md``):

    - ``"discriminator"`` (the paper's): ``s = D(G(x))`` logit, standardised by the mean and standard
      deviation of the same quantity over training images, anomaly score ``1 - sigmoid(z)``.
    - ``"reconstruction"``: mean absolute reconstruction error ``|x - G(x)|``, standardised the same way,
      anomaly score ``sigmoid(z)``.

    Both lie in [0, 1], higher = more abnormal. The statistics and the decision threshold are buffers, so
    they are saved in the state dict with the weights and travel with an exported TorchScript module.

    Args:
        generator: a SimSID generator whose ``forward(x)`` returns a dict with ``"recon"``.
        discriminator: maps B x 1 x H x W images to B x 1 logits.
        score_kind: which score ``forward`` returns, one of ``SCORE_KINDS``.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, score_kind: str = "discriminator") -> None:
        super().__init__()
        if score_kind not in SCORE_KINDS:
            raise ValueError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}.")
        self.generator = generator
        self.discriminator = discriminator
        self.score_kind = score_kind
        self.statistics = ScoreStatistics()

    def raw_scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction and un-normalised scores.

        Args:
            x: B x 1 x H x W images in [0, 1].

        Returns:
            ``"recon"`` B x 1 x H x W, ``"anomaly_map"`` B x 1 x H x W (``|x - recon|``),
            ``"disc_logit"`` B, ``"recon_error"`` B.
        """
        recon = self.generator(x)["recon"]
        anomaly_map = (x - recon).abs()
        disc_logit = self.discriminator(recon).reshape(-1).float()
        recon_error = anomaly_map.flatten(1).mean(1).float()
        return {"recon": recon, "anomaly_map": anomaly_map, "disc_logit": disc_logit, "recon_error": recon_error}

    def normalise(self, disc_logit: torch.Tensor, recon_error: torch.Tensor) -> dict[str, torch.Tensor]:
        """Anomaly scores in [0, 1] (higher = more abnormal) from raw scores, both of shape B."""
        mean, std = self.statistics.mean, self.statistics.std
        z_disc = (disc_logit - mean[0]) / std[0]
        z_recon = (recon_error - mean[1]) / std[1]
        return {"discriminator": 1.0 - torch.sigmoid(z_disc), "reconstruction": torch.sigmoid(z_recon)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly map and score.

        Args:
            x: B x 1 x H x W images in [0, 1].

        Returns:
            the anomaly map B x 1 x H x W and the anomaly score B (of ``score_kind``) in [0, 1].
        """
        raw = self.raw_scores(x)
        score = self.normalise(raw["disc_logit"], raw["recon_error"])[self.score_kind]
        return raw["anomaly_map"], score
