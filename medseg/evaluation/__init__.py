"""Evaluation: the one scoring loop, medseg-eval and medseg-report."""
