"""Lightning callbacks of medseg."""

from medseg.training.callbacks.ema import EMAWeightAveraging, WarmupEMA
from medseg.training.callbacks.epoch_log import EpochLog
from medseg.training.callbacks.last import LastCheckpoint
from medseg.training.callbacks.progressive import ProgressiveSchedule, Stage

__all__ = ["EMAWeightAveraging", "EpochLog", "LastCheckpoint", "ProgressiveSchedule", "Stage", "WarmupEMA"]
