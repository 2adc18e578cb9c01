"""Experiment trackers: the config once as MLflow params, system metrics, the dataset, TensorBoard's HPARAMS view."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from medseg.config import run_name
from medseg.data.augment import size_pair

log = logging.getLogger(__name__)

FINAL_METRICS = {"hparams/best_val_dice": "best/val/dice_mean", "hparams/test_dice": "test/dice_mean"}
# MLflow 3 opens an experiment by its kind; model training, not GenAI traces
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# what a run is compared by first; run plumbing (paths, loggers, callbacks, hydra) last
PARAM_ORDER = ("model", "stage", "data", "trainer", "seed")
PARAM_LAST = ("paths", "logger", "callbacks")
_COPY = re.compile(r"^\$\{[\w.]+\}$")  # `${stage.stages}`: a plain copy of another key (not a resolver)


class MLflowTracker(MLFlowLogger):
    """Lightning's MLFlowLogger for model training: the experiment tagged as such, system metrics sampled
    every SYSTEM_METRICS_INTERVAL seconds (`system/*`) while the run lasts."""

    def __init__(self, *args: Any, log_system_metrics: bool = True, system_metrics_interval: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_system_metrics, self.system_metrics_interval = log_system_metrics, system_metrics_interval
        self._started, self._monitor = False, None

    @property
    def experiment(self):  # type: ignore[override]
        """The MLflow client; on first use the experiment's kind is set and system metrics start."""
        client = super().experiment
        if not self._started and getattr(self, "_run_id", None):
            self._started = True
            experiment = client.get_experiment(self._experiment_id)
            if EXPERIMENT_KIND[0] not in experiment.tags:
                client.set_experiment_tag(self._experiment_id, *EXPERIMENT_KIND)
            if self.log_system_metrics:
                self._monitor = _system_monitor(self._run_id, self._tracking_uri, self.system_metrics_interval)
        return client

    def finalize(self, status: str = "success") -> None:
        """Stop sampling system metrics, then end the run."""
        if self._monitor is not None:
            _stop_monitor(self._monitor)
            self._monitor = None
        super().finalize(status)

    def log_dataset(self, record: dict[str, str]) -> None:
        """The training data as an MLflow dataset input (name, digest, source) and as run tags."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        dataset = MetaDataset(  # type: ignore[abstract]
            resolve_dataset_source(record["source"]), name=record["name"], digest=record["digest"]
        )
        context = InputTag(key="mlflow.data.context", value="training")
        self.experiment.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), [context])])
        self.experiment.set_tag(self.run_id, "dataset", record["name"])
        self.experiment.set_tag(self.run_id, "dataset_digest", record["digest"])


def _system_monitor(run_id: str, tracking_uri: str | None, interval: float):
    """A started MLflow system metrics monitor, or None (with a warning) where psutil is missing."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=tracking_uri)
    except ImportError as exc:
        log.warning("MLflow system metrics off: %s", exc)
        return None
    monitor.start()
    return monitor


def _stop_monitor(monitor) -> None:
    """Stop sampling; a run shorter than one interval still gets one sample of each system metric (MLflow's
    monitor publishes only after a whole interval)."""
    monitor.finish()
    if getattr(monitor, "_logging_step", 1) == 0:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


class DatasetRecord(Callback):
    """Records the training data (name, digest of the source files) with every tracker that takes datasets."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = getattr(trainer.datamodule, "dataset_record", None)
        for logger in trainer.loggers:
            if isinstance(logger, MLflowTracker) and record is not None:
                logger.log_dataset(record())


def tracked_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config flattened once (`model/net/encoder_name`): a key that only repeats another key
    (`${stage.stages}`) is left out; model, stage, data and trainer keys first, run plumbing last."""
    flat: dict[str, Any] = {}
    _flatten(cfg, "", flat)
    rank = {key: i for i, key in enumerate(PARAM_ORDER)}

    def order(key: str) -> tuple[int, str]:
        top = key.split("/", 1)[0]
        return (rank.get(top, len(rank) + (PARAM_LAST.index(top) + 1 if top in PARAM_LAST else 0)), key)

    return {key: flat[key] for key in sorted(flat, key=order)}


def _flatten(node: DictConfig | ListConfig, prefix: str, out: dict[str, Any]) -> None:
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        raw = node._get_node(key)._value()  # type: ignore[union-attr,arg-type]
        if isinstance(raw, str) and _COPY.match(raw):
            continue
        value = node[key]  # type: ignore[index]
        name = f"{prefix}{key!s}"
        if isinstance(value, DictConfig | ListConfig) and len(value):
            _flatten(value, f"{name}/", out)
        else:
            out[name] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def log_config(cfg: DictConfig, loggers: list[Logger]) -> None:
    """Every tracker gets the resolved config: MLflow as flat params without copies, the others whole."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.log_hyperparams(tracked_params(cfg))
        else:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]


def key_hyperparameters(cfg: DictConfig, encoder_depth: int | None = None, dataset: str = "") -> dict:
    """The settings a sweep is compared by: experiment, dataset, backbone, loss, stages, epochs, lr, batch size,
    image size, bins, output stride, encoder depth (stages used; ENCODER_DEPTH when all) and seed. Those a
    network of another `_target_` does not have are left empty."""
    net = cfg.model.net
    bins, stride = net.get("bins"), net.get("output_stride")
    depth = net.get("encoder_depth") or encoder_depth
    return {
        "experiment": _choice("experiment"),
        "dataset": dataset,
        "backbone": str(net.get("encoder_name") or net.get("_target_")),
        "loss": str(cfg.model.loss._target_).rsplit(".", 1)[-1],
        "stage": "+".join(str(s.name) for s in cfg.stage.stages),
        "epochs": int(cfg.trainer.max_epochs),
        "lr": float(cfg.stage.stages[0].lr),
        "batch_size": int(cfg.data.batch_size),
        "image_size": "x".join(str(s) for s in size_pair(cfg.data.image_size)),
        "bins": "" if bins is None else ",".join(str(b) for b in bins),
        "output_stride": "" if stride is None else int(stride),
        "encoder_depth": "" if depth is None else int(depth),
        "seed": int(cfg.seed),
    }


def _choice(group: str) -> str:
    """The option chosen for a config group in this Hydra run ('' outside one, or when none was chosen)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().runtime.choices.get(group) or "")


def trial_name(cfg: DictConfig) -> str:
    """The HPARAMS trial of a run: its folder, then its overrides where it has any."""
    folder, name = Path(cfg.paths.output_dir).name, run_name(cfg.paths.output_dir)
    return folder if name == folder else f"{folder}: {name}"


def write_hparams(logger: TensorBoardLogger, params: dict, metrics: dict, trial: str) -> None:
    """TensorBoard's HPARAMS session of a run, named TRIAL, with its final METRICS."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(params, metrics)
    content = start.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
    data.session_start_info.group_name = trial
    content.content = data.SerializeToString()
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    logger.log_metrics(metrics, 0)


def log_run_summary(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, metrics: dict) -> None:
    """Final metrics with the key hyper-parameters (TensorBoard HPARAMS), and MLflow artifacts when asked for."""
    final = {name: float(metrics[key]) for name, key in FINAL_METRICS.items() if metrics.get(key) is not None}
    config_file = Path(cfg.paths.output_dir) / "config.yaml"
    record = getattr(trainer.datamodule, "dataset_record", None)
    encoder = getattr(getattr(model, "net", None), "encoder", None)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and final:
            dataset = record()["name"] if record is not None else ""
            params = key_hyperparameters(cfg, getattr(encoder, "depth", None), dataset)
            write_hparams(logger, params, final, trial_name(cfg))
        elif isinstance(logger, MLFlowLogger):
            if final:
                logger.log_metrics(final)
            if cfg.logger.mlflow.get("log_model") and config_file.is_file():
                logger.experiment.log_artifact(logger.run_id, str(config_file))
                log_checkpoints(logger, config_file.parent / "checkpoints")
        logger.save()


def log_checkpoints(logger: MLFlowLogger, folder: Path) -> None:
    """Every checkpoint of the run (best.ckpt, last.ckpt) as an artifact `<stem>/<file>`, unless already logged."""
    for path in sorted(folder.glob("*.ckpt")):
        logged = {a.path for a in logger.experiment.list_artifacts(logger.run_id, path.stem)}
        if f"{path.stem}/{path.name}" not in logged:
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=path.stem)
