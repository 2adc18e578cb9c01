"""LightningModule: PSPNet forward, hybrid loss, torchmetrics Dice/IoU, TensorBoard scalars and images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torchmetrics import MetricCollection

from medseg.data.partial_labels import mask_unlabelled
from medseg.deploy.averaging import tta_logits
from medseg.deploy.views import check_tta
from medseg.evaluation.scores import foreground_scores, segmentation_metrics, update_ignoring
from medseg.evaluation.volumes import volume_means
from medseg.losses import inverse_frequency_weights, set_class_weights
from medseg.models import PARTS
from medseg.postprocess import class_indices, keep_largest
from medseg.utils.checkpoint import load_checkpoint
from medseg.utils.registry import build, check_arguments
from medseg.utils.visualize import overlay_grid, to_uint8


def gather_items(items: dict) -> dict:
    """ITEMS merged over every DDP process (unchanged in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, items)
    return {k: v for part in parts for k, v in part.items()}


def _plain(cfg):
    """An OmegaConf node as plain containers (checkpoint-friendly), anything else unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


class SegmentationModule(L.LightningModule):
    """Trains and evaluates a segmentation network built from its config through `medseg.utils.registry`.

    Args:
        net: the network's config (`_target_` medseg.models.PSPNet and its arguments).
        loss: the loss's config (a `medseg.losses` class); `ignore_index` is passed to it.
        optimizer: a partial torch optimizer config; called with the parameters.
        scheduler: a partial `torch.optim.lr_scheduler` config stepped per epoch, or None.
        class_names: class names, background first; their count sets the output classes.
        class_weights: None, "auto" (inverse pixel frequency of the training masks) or one weight per class.
        ignore_index: mask value left out of the loss and the metrics.
        log_images: log an input / truth / prediction grid at each validation.
        channels_last: train in NHWC memory format.
        tta: test-time views (e.g. ["hflip"], ["scale1.25"]) whose logits are averaged at test and by the
            inference tools.
        keep_largest: {class name: k}: at test and inference keep each class's k largest components, fill holes.
    """

    def __init__(
        self,
        net: dict,
        loss: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        class_names: Sequence[str] = ("background", "foreground"),
        class_weights: str | Sequence[float] | None = None,
        ignore_index: int = 255,
        log_images: bool = True,
        channels_last: bool = False,
        tta: Sequence[str] = (),
        keep_largest: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        arguments = {k: _plain(v) for k, v in locals().items() if k not in ("self", "__class__")}
        self.save_hyperparameters(arguments, logger=False)  # train() logs the whole resolved config once
        self.class_names = list(class_names)
        self.frozen_parts: tuple[str, ...] = ()
        self.tta = check_tta(tta)
        self.keep = class_indices(keep_largest, self.class_names)
        num_classes = len(self.class_names)
        self.net = build(self.hparams.net, "net", num_classes=num_classes)
        if channels_last:  # NHWC convolutions: about 1.5x faster training on CPU with dilated encoders
            self.net.to(memory_format=torch.channels_last)
        self.criterion = build(self.hparams.loss, "loss", ignore_index=ignore_index)
        self.register_buffer("class_weights", torch.ones(num_classes))
        self._weights_set = class_weights is None
        if class_weights not in (None, "auto"):
            self._set_weights(torch.as_tensor(list(class_weights), dtype=torch.float32))
        self.val_metrics = segmentation_metrics(num_classes, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.best_val_dice = float("-inf")  # running best of val/dice_mean, kept in the checkpoint

    def _set_weights(self, weights: torch.Tensor) -> None:
        self.class_weights.copy_(weights)
        set_class_weights(self.criterion, self.class_weights)  # type: ignore[arg-type]
        self._weights_set = True

    def setup(self, stage: str) -> None:
        """Compute inverse-frequency class weights from the training masks once, when asked for."""
        if self.hparams.class_weights == "auto" and not self._weights_set and stage == "fit":
            counts = self.trainer.datamodule.class_pixel_counts()
            self._set_weights(inverse_frequency_weights(counts))
            self.print(
                f"class weights from training pixel counts: {[round(w, 3) for w in self.class_weights.tolist()]}"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the running best validation Dice with the run."""
        checkpoint["best_val_dice"] = self.best_val_dice

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Class weights come back with the state dict: do not recompute them."""
        self._weights_set = True
        self.best_val_dice = float(checkpoint.get("best_val_dice", float("-inf")))
        set_class_weights(self.criterion, self.class_weights)  # type: ignore[arg-type]

    def set_trainable(self, parts: Sequence[str]) -> None:
        """Train only the named network parts; frozen parts keep their BatchNorm statistics too."""
        self.frozen_parts = tuple(name for name in PARTS if name not in parts)
        for name in PARTS:
            getattr(self.net, name).requires_grad_(name in parts)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Switch train/eval mode, keeping frozen parts in eval mode."""
        super().train(mode)
        for name in getattr(self, "frozen_parts", ()):
            getattr(self.net, name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, H, W] for images [B, C, H, W]."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The criterion; with the batch's `labelled` classes where a case leaves some out (the marginal loss)."""
        labelled = batch.get("labelled")
        if labelled is None or bool(labelled.all()):
            return self.criterion(logits, batch["mask"])
        return self.criterion(logits, batch["mask"], labelled)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self._loss(logits, batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict, metrics: MetricCollection, prefix: str, final: bool = False) -> torch.Tensor:
        logits = tta_logits(self, batch["image"], self.tta) if final else self(batch["image"])
        loss = self._loss(logits, batch)
        self.log(f"{prefix}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(logits), sync_dist=True)
        pred = mask_unlabelled(logits.argmax(1), batch.get("labelled"))  # left out of the scores of that case
        if final and self.keep:
            cleaned = [keep_largest(p, self.keep) for p in pred.cpu().numpy()]
            pred = torch.as_tensor(np.stack(cleaned), device=pred.device)
        update_ignoring(metrics, pred, batch["mask"], self.hparams.ignore_index)
        return pred

    def _log_metrics(self, metrics: MetricCollection, prefix: str) -> dict:
        scores = foreground_scores(metrics.compute(), self.class_names, f"{prefix}/")
        one_class = len(self.class_names) == 2  # the mean repeats the one class: monitored, not charted
        for name, value in scores.items():
            mean = name.endswith("_mean")
            self.log(name, value, prog_bar=name == f"{prefix}/dice_mean", logger=not (mean and one_class))
        metrics.reset()
        return scores

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self._evaluate(batch, self.val_metrics, "val")
        if batch_idx == 0 and self.hparams.log_images and not self.trainer.sanity_checking:
            self._log_image_grid(batch, pred)

    def on_validation_epoch_end(self) -> None:
        dice = float(self._log_metrics(self.val_metrics, "val")["val/dice_mean"])
        if not self.trainer.sanity_checking:
            if not math.isnan(dice):
                self.best_val_dice = max(self.best_val_dice, dice)
            if self.best_val_dice > float("-inf"):
                self.log("val/dice_best", self.best_val_dice)

    def on_test_epoch_start(self) -> None:
        self._test_slices: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # item -> (prediction, reference)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        pred = self._evaluate(batch, self.test_metrics, "test", final=True)
        items = batch["index"] if "index" in batch else batch["id"]
        pairs = zip(pred.cpu().numpy().astype(np.uint8), batch["mask"].cpu().numpy().astype(np.uint8), strict=True)
        self._test_slices.update(zip((int(i) for i in items), pairs, strict=True))

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")
        volumes: list[dict] = getattr(self.trainer.datamodule, "volumes", lambda split: [])("test")
        if volumes:  # per-volume Dice, HD95 and NSD (2 mm), as medseg-eval scores volumes
            slices = gather_items(self._test_slices)
            for name, value in volume_means(slices, volumes, self.class_names, "test").items():
                self.log(name, value, rank_zero_only=True)

    def _log_image_grid(self, batch: dict, pred: torch.Tensor) -> None:
        """The input / truth / prediction grid to every logger that takes images (TensorBoard, MLflow)."""
        images, masks, preds = (t[:4].detach().float().cpu().numpy() for t in (batch["image"], batch["mask"], pred))
        grid = overlay_grid(images, masks, preds, self.class_names)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
                experiment.add_image("val/prediction", grid, self.global_step)
            elif hasattr(experiment, "log_image") and getattr(logger, "run_id", None):  # MLflow's client
                name = f"val/prediction/step_{self.global_step:06d}.png"
                experiment.log_image(logger.run_id, to_uint8(grid), artifact_file=name)

    def configure_optimizers(self):
        """Optimizer and optional scheduler from their (partial) configs."""
        optimizer = build(self.hparams.optimizer, "optimizer")(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = build(self.hparams.scheduler, "scheduler")(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def module_from_checkpoint(path: str | Path) -> SegmentationModule:
    """The SegmentationModule of a checkpoint (weights-only load, hyper-parameters checked), in eval mode."""
    checkpoint = load_checkpoint(path)
    try:
        check_arguments(SegmentationModule, checkpoint["hyper_parameters"], "hyper_parameters")
        module = SegmentationModule(**checkpoint["hyper_parameters"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.eval()
