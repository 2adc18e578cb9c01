"""Lightning callbacks of medseg."""

from medseg.callbacks.ema import EMAWeightAveraging, WarmupEMA
from medseg.callbacks.epoch_log import EpochLog
from medseg.callbacks.last import LastCheckpoint
from medseg.callbacks.progressive import ProgressiveSchedule, Stage

__all__ = ["EMAWeightAveraging", "EpochLog", "LastCheckpoint", "ProgressiveSchedule", "Stage", "WarmupEMA"]
