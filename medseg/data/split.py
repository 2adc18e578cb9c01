"""Patient-level train/val/test split and nested, stable training subsets."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def _order(patients: Iterable[str], seed: int, salt: str) -> list[str]:
    """Patients in a pseudo-random order that depends only on the seed and each identifier."""
    key = lambda p: hashlib.sha256(f"{seed}:{salt}:{p}".encode()).hexdigest()  # noqa: E731
    return sorted(set(patients), key=key)


def split_patients(
    patients: Iterable[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 42
) -> dict[str, list[str]]:
    """Split patients into train/val/test; each non-empty split gets at least one patient."""
    order = _order(patients, seed, "split")
    n = len(order)
    if n < 3:
        raise ValueError(f"need at least 3 patients for a train/val/test split, found {n}")
    total = sum(fractions)
    n_val = max(1, round(n * fractions[1] / total)) if fractions[1] > 0 else 0
    n_test = max(1, round(n * fractions[2] / total)) if fractions[2] > 0 else 0
    n_train = n - n_val - n_test
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def subset_size(count: int, fraction: float) -> int:
    """How many of COUNT patients a FRACTION takes: the nested-subset rule (a prefix of one stable order)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction}")
    return max(1, round(count * fraction))


def subset_patients(patients: Iterable[str], fraction: float, seed: int = 42) -> list[str]:
    """A stable subset of about FRACTION of the patients; smaller fractions are nested in larger ones."""
    order = _order(patients, seed, "subset")
    return order[: subset_size(len(order), fraction)]


def fold_split(parts: dict[str, list[str]], num_folds: int, fold: int, seed: int = 42) -> dict[str, list[str]]:
    """Patient-level K-fold over train+val of PARTS: fold FOLD validates, the others train; test stays as is."""
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"need num_folds >= 2 and 0 <= fold < num_folds, got num_folds={num_folds}, fold={fold}")
    pool = _order(parts["train"] + parts["val"], seed, "fold")
    if len(pool) < num_folds:
        raise ValueError(f"{len(pool)} train+val patients cannot fill {num_folds} folds")
    folds = [pool[i::num_folds] for i in range(num_folds)]
    return {
        "train": [p for i, f in enumerate(folds) if i != fold for p in f],
        "val": folds[fold],
        "test": list(parts["test"]),
    }
