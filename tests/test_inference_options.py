"""Test-time views (flips, scales), mask post-processing, checkpoint ensembles, encoder depth and weight averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.deploy.averaging import Ensemble, TestTimeAugmented, tta_logits
from medseg.deploy.export import export_checkpoint
from medseg.deploy.predictor import Predictor
from medseg.deploy.views import check_tta
from medseg.evaluation.evaluate import evaluate
from medseg.models import PSPNet
from medseg.models.encoder import BACKBONES
from medseg.postprocess import class_indices, keep_largest


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return PSPNet("resnet18", in_channels=1, num_classes=3, decoder_channels=16, encoder_depth=3).eval()


def test_hflip_tta_is_the_plain_prediction_on_a_symmetric_input():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)  # mirror-symmetric kernels: a symmetric model
    half = torch.rand(1, 1, 48, 24)
    x = torch.cat([half, half.flip(-1)], -1)  # left-right symmetric input
    with torch.no_grad():
        plain, averaged = conv(x), TestTimeAugmented(conv, ["hflip"])(x)
    torch.testing.assert_close(averaged, plain)
    assert torch.equal(averaged.argmax(1), plain.argmax(1))


def test_hflip_tta_is_the_mean_of_the_two_passes(net):
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        expected = (net(x) + net(x.flip(-1)).flip(-1)) / 2
        averaged = tta_logits(net, x, ["hflip"])
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, net(x).detach(), atol=1e-4)  # the flip matters on a general input


def test_scale_tta_is_the_plain_prediction_on_a_constant_image():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(1, 3, 1)  # a per-pixel model: a constant image looks the same at any scale
    x = torch.full((1, 1, 30, 42), 0.3)
    with torch.no_grad():
        torch.testing.assert_close(TestTimeAugmented(pointwise, ["scale0.5", "scale1.25"])(x), pointwise(x))


def test_scale_tta_is_the_mean_with_the_resized_pass(net):
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        resized = net(F.interpolate(x, size=(50, 70), mode="bilinear"))  # 1.25 times the size
        expected = (net(x) + F.interpolate(resized, size=(40, 56), mode="bilinear")) / 2
        averaged = tta_logits(net, x, ["scale1.25"])
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, net(x).detach(), atol=1e-4)
    assert check_tta(["hflip", "scale0.75", "scale2"]) == ["hflip", "scale0.75", "scale2"]
    for bad in ("scale1", "scale0", "scale5", "scale", "zoom1.25"):
        with pytest.raises(ValueError, match="scale<factor>"):
            check_tta([bad])


def test_ensemble_of_two_copies_gives_the_single_networks_probabilities(net):
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(Ensemble([net, net])(x).softmax(1), net(x).softmax(1))


def test_keep_largest_removes_an_island_and_fills_a_hole():
    clean = np.zeros((40, 40), np.uint8)
    clean[5:35, 3:15] = 1
    clean[5:35, 22:36] = 1  # two lungs
    clean[12:18, 24:30] = 2  # another class inside the right one stays
    assert np.array_equal(keep_largest(clean, {1: 2}), clean)  # identity on a clean mask
    noisy = clean.copy()
    noisy[37:39, 18:20] = 1  # planted island
    noisy[20:23, 6:9] = 0  # planted hole
    np.testing.assert_array_equal(keep_largest(noisy, {1: 2}), clean)
    assert keep_largest(noisy, {1: 2}, fill_holes=False)[21, 7] == 0
    assert class_indices({"lung": 2}, ["background", "lung"]) == {1: 2}
    with pytest.raises(ValueError, match="not classes of this model"):
        class_indices({"heart": 1}, ["background", "lung"])


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_encoder_depth_sets_the_output_stride_and_keeps_odd_sizes(backbone):
    x = torch.rand(1, 1, 67, 53)
    full = PSPNet(backbone, num_classes=2, decoder_channels=16, output_stride=32).eval()
    shallow = PSPNet(backbone, num_classes=2, decoder_channels=16, output_stride=32, encoder_depth=2).eval()
    assert shallow.encoder.output_stride < full.encoder.output_stride
    assert sum(p.numel() for p in shallow.parameters()) < sum(p.numel() for p in full.parameters())
    with torch.no_grad():
        assert shallow(x).shape == full(x).shape == (1, 2, 67, 53)


def test_ensemble_and_tta_through_the_predictor_and_eval(demo_checkpoint, demo_root, tmp_path):
    single = Predictor(demo_checkpoint)
    pair = Predictor([demo_checkpoint, demo_checkpoint])
    flipped = Predictor(demo_checkpoint, tta=["hflip"])
    assert pair.info.members == 2 and flipped.info.tta == ["hflip"]
    image = np.random.default_rng(0).random((80, 72, 1), dtype=np.float32)
    np.testing.assert_array_equal(pair.segment(image), single.segment(image))
    split = {"split_file": demo_checkpoint.parent.parent / "split.json", "split": "test"}
    rows = {
        name: evaluate(model, demo_root, tmp_path / name, worst=0, **split)
        for name, model in (("one", demo_checkpoint), ("two", [demo_checkpoint, demo_checkpoint]))
    }
    assert [r["dice"] for r in rows["one"]] == pytest.approx([r["dice"] for r in rows["two"]], nan_ok=True)
    flipped_rows = evaluate(demo_checkpoint, demo_root, tmp_path / "tta", worst=0, tta=["hflip"], **split)
    assert len(flipped_rows) == len(rows["one"])


@pytest.mark.slow  # one export of a 2-member graph with a flip and a scale: six copies of the network
def test_ensemble_with_tta_exports_to_one_onnx_graph(make_cfg, tmp_path):
    from medseg.training.pipeline import train

    overrides = ["debug=tiny", "model.net.encoder_depth=2", "stage.stages.0.epochs=1", "trainer.limit_train_batches=2"]
    train(make_cfg([*overrides, "test=false"]))
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    views = ["hflip", "scale1.25"]
    onnx_pair, errors = export_checkpoint([checkpoint, checkpoint], tmp_path / "pair.onnx", tta=views)
    assert max(errors) <= 1e-4  # parity with the PyTorch ensemble at three sizes
    ort = Predictor(onnx_pair)
    assert ort.info.members == 2 and ort.info.tta == views
    batch = np.random.default_rng(0).random((1, 1, 80, 72), dtype=np.float32)
    flipped = Predictor(checkpoint, tta=views)  # PyTorch, one member
    probabilities = [torch.from_numpy(p.logits(batch)).softmax(1) for p in (ort, flipped)]
    torch.testing.assert_close(*probabilities, atol=1e-4, rtol=0)


@pytest.mark.slow  # a 2-epoch training run and its test
def test_ema_weights_are_what_the_best_checkpoint_holds(make_cfg, tmp_path, monkeypatch):
    from medseg.training.module import SegmentationModule
    from medseg.training.pipeline import train
    from medseg.utils.checkpoint import load_checkpoint

    name = "net.segmentation_head.weight"
    tested = []  # the weights the test after fitting runs on
    record = lambda module: tested.append(module.state_dict()[name].clone())  # noqa: E731
    monkeypatch.setattr(SegmentationModule, "on_test_start", record)
    train(make_cfg(["debug=tiny", "stage.stages.0.epochs=2", "callbacks=ema", "logger=csv"]))
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert "current_model_state" in best  # Lightning's weight averaging: state_dict holds the EMA weights
    assert not torch.equal(best["state_dict"][name], best["current_model_state"][name])
    assert len(tested) == 1 and torch.equal(tested[0], best["state_dict"][name])  # the test scores the EMA weights


def test_ema_decay_warms_up_to_its_cap_and_copies_batch_counters():
    import pickle

    from torch.optim.swa_utils import AveragedModel

    from medseg.training.callbacks.ema import WarmupEMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = pickle.loads(pickle.dumps(WarmupEMA(decay=0.99, warmup=10)))  # plain data: spawned DDP workers get it
    average = AveragedModel(model, multi_avg_fn=ema, use_buffers=True)
    average.update_parameters(model)  # the first update copies
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.rand(2, 1, 4, 4))  # a training-mode pass moves the running stats and the batch counter
    average.update_parameters(model)  # second update: decay (1 + 1) / (10 + 1)
    torch.testing.assert_close(average.module[0].weight, start + 9 / 11)
    assert int(average.module[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 1
    average.n_averaged.fill_(5000)  # long after the warm-up the decay is the cap
    before = average.module[0].weight.detach().clone()
    average.update_parameters(model)
    torch.testing.assert_close(average.module[0].weight, before + 0.01 * (model[0].weight - before))
    with pytest.raises(ValueError, match="decay"):
        WarmupEMA(decay=1.5)
