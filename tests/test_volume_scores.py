"""Per-volume scores on synthetic volumes with anisotropic spacing, against a computation from first principles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.data.datamodule import SegmentationDataModule
from medseg.evaluation.scores import case_scores
from medseg.evaluation.volumes import volume_means

SPACING = (2.5, 1.0, 0.8)  # slice, row, column (mm)


def ball(centre_slice: int) -> np.ndarray:
    """A 12 mm radius ball in a 24 x 40 x 40 grid, its centre on slice CENTRE_SLICE."""
    z, y, x = np.mgrid[0:24, 0:40, 0:40]
    inside = ((z - centre_slice) * SPACING[0]) ** 2 + ((y - 20) * SPACING[1]) ** 2 + ((x - 20) * SPACING[2]) ** 2
    return (inside <= 12**2).astype(np.uint8)


def surface_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each boundary voxel of A to B's boundary, and from B's to A's."""
    edge_a, edge_b = (m.astype(bool) & ~ndimage.binary_erosion(m.astype(bool)) for m in (a, b))
    to_b = ndimage.distance_transform_edt(~edge_b, sampling=SPACING)[edge_a]
    to_a = ndimage.distance_transform_edt(~edge_a, sampling=SPACING)[edge_b]
    return to_b, to_a


def test_a_perfect_prediction_scores_dice_1_hd95_0_nsd_1():
    truth = ball(11)
    scores = case_scores(truth, truth, 2, SPACING, nsd_tolerance=2.0)
    assert scores["dice"][0] == 1.0 and scores["hd95"][0] == 0.0 and scores["nsd"][0] == 1.0
    assert scores["volume_true"][0] == pytest.approx(truth.sum() * 2.5 * 1.0 * 0.8 / 1000)


def test_a_ball_shifted_by_one_slice_scores_as_computed_by_hand():
    truth, pred = ball(11), ball(12)
    scores = case_scores(pred, truth, 2, SPACING, nsd_tolerance=2.0)
    dice = 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
    to_truth, to_pred = surface_distances(pred, truth)
    hd95 = max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))
    nsd = ((to_truth <= 2.0).sum() + (to_pred <= 2.0).sum()) / (len(to_truth) + len(to_pred))
    assert scores["dice"][0] == pytest.approx(dice, abs=1e-6)
    assert scores["hd95"][0] == pytest.approx(hd95, abs=1e-6) and hd95 == pytest.approx(2.5)  # one slice, in mm
    assert scores["nsd"][0] == pytest.approx(nsd, abs=1e-6) and 0.5 < nsd < 0.9
    wider = case_scores(pred, truth, 2, SPACING, nsd_tolerance=2.5)["nsd"][0]
    assert wider == pytest.approx(1.0)  # every surface point within one slice step


def test_empty_masks_follow_the_convention_in_volumes():
    truth = ball(11)
    empty = np.zeros_like(truth)
    missed = case_scores(empty, truth, 2, SPACING, nsd_tolerance=2.0)
    assert missed["dice"][0] == 0.0 and missed["nsd"][0] == 0.0 and np.isnan(missed["hd95"][0])
    neither = case_scores(empty, empty, 2, SPACING, nsd_tolerance=2.0)
    assert all(np.isnan(neither[m][0]) for m in ("dice", "hd95", "nsd"))


def test_the_test_step_means_are_the_per_volume_scores_averaged():
    perfect, shifted = ball(11), ball(12)
    slices = {i: (perfect[i], perfect[i]) for i in range(24)}  # volume a: slices 0..23, perfect
    slices |= {100 + i: (shifted[i], perfect[i]) for i in range(24)}  # volume b: shifted by one slice
    volumes = [
        {"name": "a", "items": list(range(24)), "spacing": list(SPACING)},
        {"name": "b", "items": [100 + i for i in range(24)], "spacing": list(SPACING)},
    ]
    means = volume_means(slices, volumes, ["background", "ball"], "test")
    expected = case_scores(shifted, perfect, 2, SPACING, 2.0)
    assert means["test/volume_dice_ball"] == pytest.approx((1 + expected["dice"][0]) / 2)
    assert means["test/volume_hd95_ball"] == pytest.approx(expected["hd95"][0] / 2) == pytest.approx(1.25)
    assert means["test/volume_nsd_ball"] == pytest.approx((1 + expected["nsd"][0]) / 2)
    assert means["test/volume_dice_mean"] == means["test/volume_dice_ball"]


@pytest.mark.parametrize(
    ("overrides", "spacing"),
    [
        ({}, [5.0, 6.0, 6.0]),  # 256 px at 1.5 mm stretched to 64 px
        ({"size_policy": "crop", "spacing": [3.0, 3.0]}, [5.0, 3.0, 3.0]),
        ({"size_policy": "letterbox", "image_size": [64, 32]}, [5.0, 12.0, 12.0]),
    ],
)
def test_test_volumes_are_the_series_in_slice_order_on_the_networks_grid(demo_root, overrides, spacing):
    dm = SegmentationDataModule(**{"image_size": 64, **overrides}, cache_dir=str(demo_root.parent), preload=False)
    dm.setup()
    volumes = dm.volumes("test")
    samples = dm.splits["test"]
    assert len(volumes) == 2 and sorted(i for v in volumes for i in v["items"]) == list(range(len(samples)))
    for volume in volumes:
        assert [samples[i].slice_index for i in volume["items"]] == list(range(8))
        assert volume["spacing"] == pytest.approx(spacing)
