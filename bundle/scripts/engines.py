"""Ignite engines for SimSID: the adversarial trainer with memory writes, and the anomaly-scoring evaluator."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from monai.engines import Evaluator, Trainer
from monai.engines.utils import default_metric_cmp_fn, default_prepare_batch
from monai.handlers import ROCAUC
from monai.inferers import Inferer, SimpleInferer
from monai.utils import ForwardMode, convert_to_tensor
from torch.optim import Optimizer

from .detector import AnomalyDetector
from .utils import as_bool, unwrap

__all__ = ["autocast_context", "SimSIDTrainer", "AnomalyEvaluator", "loss_terms", "auc_inputs"]


def autocast_context(device: torch.device | str, amp: bool, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device`` when ``amp``; bf16 by default (CPU, and GPUs that support it), else fp16.

    ``amp`` may be the ``"true"``/``"false"`` string of the command line (:func:`scripts.utils.as_bool`).
    """
    if not as_bool(amp, "amp"):
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if dtype is None:
        dtype = torch.bfloat16 if device_type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def loss_terms(output: dict[str, Any]) -> dict[str, float]:
    """The scalar losses of a trainer iteration's output, for ``StatsHandler``/``TensorBoardStatsHandler``."""
    return {k: v for k, v in output.items() if k.startswith("loss_")}


def auc_inputs(score_kind: str) -> Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    """Output transform for an AUC metric on the evaluator: (B scores, higher = more abnormal; B labels)."""

    def transform(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return output[f"score_{score_kind}"], output["label"].reshape(-1).long()

    return transform


def score_auc_metrics(detector: AnomalyDetector) -> dict[str, Metric]:
    """``val_auc_<kind>``: a MONAI ``ROCAUC`` of every score kind the detector computes (``score_kinds``)."""
    return {f"val_auc_{kind}": ROCAUC(output_transform=auc_inputs(kind)) for kind in unwrap(detector).score_kinds}


class SimSIDTrainer(Trainer):
    """Adversarial training of the SimSID generator and discriminator (``docs/method.md``, "Training schedule").

    Every iteration: one generator forward in train mode, then a discriminator step on the real batch and
    the detached reconstruction. Every ``n_critic``-th iteration (the first of each group) the same
    forward also gives a generator step on all generator losses, followed by the FIFO write of the
    batch's query vectors into the generator's memory queues. On the other iterations the generator
    forward runs without gradients.

    Args:
        device: the device to train on.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``"image"`` B x 1 x H x W in [0, 1].
        generator: SimSID generator (``forward`` returns a dict, ``write_memory(queries)``); may be wrapped
            in ``DistributedDataParallel``.
        discriminator: B x 1 x H x W -> B x 1 logits; may be wrapped in ``DistributedDataParallel`` (only the
            discriminator step goes through the wrapper, the generator step uses the module inside).
        g_optimizer, d_optimizer: optimisers of the two networks.
        g_loss_function: ``(outputs, target, fake_logits) -> dict`` of named terms with ``"total"``.
        d_loss_function: ``(real_logits, fake_logits) -> loss``.
        n_critic: a generator step every ``n_critic`` iterations.
        inferer: runs the generator, ``SimpleInferer`` by default.
        amp: autocast (bf16 on the CPU and on GPUs that support it, fp16 with a gradient scaler otherwise).
        train_handlers: Ignite handlers with ``attach``.
        kwargs: passed on to :class:`monai.engines.Trainer` (``epoch_length``, ``non_blocking``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        g_loss_function: Callable[..., dict[str, torch.Tensor]],
        d_loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        n_critic: int = 2,
        inferer: Inferer | None = None,
        amp: bool = False,
        train_handlers: Sequence | None = None,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict[str, Metric] | None = None,
        **kwargs: Any,
    ) -> None:
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            handlers=train_handlers,
            decollate=False,
            **kwargs,
        )
        self.generator = generator
        self.discriminator = discriminator
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.g_loss_function = g_loss_function
        self.d_loss_function = d_loss_function
        self.n_critic = n_critic
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.use_amp = as_bool(amp, "amp")
        use_scaler = self.use_amp and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported()
        self.grad_scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _step(self, loss: torch.Tensor, optimizer: Optimizer) -> None:
        if self.grad_scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(optimizer)
            self.grad_scaler.update()

    def _iteration(self, engine: SimSIDTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        x, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        # plain tensors: training needs no metadata, and batched metadata breaks the gathered memory writes
        x = convert_to_tensor(x, track_meta=False)
        g_step = (engine.state.iteration - 1) % engine.n_critic == 0
        engine.generator.train()
        engine.discriminator.train()
        autocast = autocast_context(engine.state.device, engine.use_amp)

        with torch.set_grad_enabled(g_step), autocast:
            outputs = engine.inferer(x, engine.generator)
        recon = outputs["recon"]

        engine.d_optimizer.zero_grad(set_to_none=True)
        with autocast:
            d_loss = engine.d_loss_function(engine.discriminator(x), engine.discriminator(recon.detach()))
        engine._step(d_loss, engine.d_optimizer)
        result: dict[str, Any] = {"image": x, "recon": recon.detach(), "loss_d": d_loss.item()}

        if g_step:
            engine.g_optimizer.zero_grad(set_to_none=True)
            engine.discriminator.requires_grad_(False)
            try:
                # the unwrapped discriminator: a DDP forward here would leave its reducer waiting for gradients
                with autocast:
                    terms = engine.g_loss_function(outputs, x, unwrap(engine.discriminator)(recon))
                engine._step(terms["total"], engine.g_optimizer)
            finally:
                engine.discriminator.requires_grad_(True)
            unwrap(engine.generator).write_memory(outputs["queries"])
            result.update({f"loss_g_{k}": v.item() for k, v in terms.items()})
        return result


class AnomalyEvaluator(Evaluator):
    """Scores every image of a split with an :class:`AnomalyDetector`.

    Each iteration's output holds, for the batch: ``"image"``, ``"label"`` (B, -1 when unknown),
    ``"recon"``, ``"anomaly_map"``, ``"residual"``, the raw ``"disc_logit"`` and ``"recon_error"`` (and, with
    feature statistics, ``"feature_score"`` and ``"pooled_features"``), and the normalised ``"score_<kind>"`` of
    every kind the detector has (B each, higher = more abnormal, :meth:`AnomalyDetector.normalise`), plus
    ``"filename"`` (list of B source paths), and the batch's ``"mask"``, ``"mask_known"`` and ``"kind"`` where it
    has them (:class:`scripts.data.transforms.LoadMaskd`, the datalist's finding kinds).

    Args:
        device: the device to run on.
        val_data_loader: yields dicts with ``"image"`` and optionally ``"label"``.
        network: the detector (its generator and discriminator are run in eval mode).
        inferer: runs ``network.raw_scores`` on the batch, ``SimpleInferer`` by default.
        amp: autocast as in :class:`SimSIDTrainer`.
        val_handlers, key_val_metric, additional_metrics: as in :class:`monai.engines.Evaluator`.
        kwargs: passed on to :class:`monai.engines.Evaluator`.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: AnomalyDetector,
        inferer: Inferer | None = None,
        amp: bool = False,
        key_val_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        val_handlers: Sequence | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            mode=ForwardMode.EVAL,
            decollate=False,
            **kwargs,
        )
        self.network = network
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.use_amp = as_bool(amp, "amp")

    def _iteration(self, engine: AnomalyEvaluator, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        x, y = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        detector = unwrap(engine.network)
        detector.eval()
        with torch.no_grad(), autocast_context(engine.state.device, engine.use_amp):
            raw = engine.inferer(x, detector.raw_scores)
        scores = detector.normalise(raw)
        labels = y.reshape(-1).long() if y is not None else torch.full((x.shape[0],), -1, dtype=torch.long)
        return {
            "image": x,
            "label": labels,
            **{k: v.float() for k, v in raw.items()},
            **{f"score_{k}": v for k, v in scores.items()},
            "filename": _filenames(batchdata, x.shape[0]),
            **{k: batchdata[k] for k in ("mask", "mask_known", "kind") if k in batchdata},
        }


def _filenames(batchdata: dict[str, Any], batch_size: int) -> list[str]:
    image = batchdata.get("image")
    meta = getattr(image, "meta", None) or batchdata.get("image_meta_dict") or {}
    names = meta.get("filename_or_obj")
    if names is None:
        return [""] * batch_size
    return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names] * batch_size)]

