"""Lightning callbacks of medseg."""

from medseg.callbacks.progressive import ProgressiveSchedule, Stage

__all__ = ["ProgressiveSchedule", "Stage"]
