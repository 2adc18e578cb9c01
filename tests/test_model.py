"""PSPNet shapes for every backbone, exact adaptive pooling, and offline-safe encoder weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medseg.models import PSPNet
from medseg.models.encoder import BACKBONES, Encoder
from medseg.models.pyramid_pooling import adaptive_avg_pool2d
from medseg.training.module import SegmentationModule

ALL = list(BACKBONES)


@pytest.mark.parametrize("backbone", ALL)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_matches_odd_input_size(backbone, in_channels):
    net = PSPNet(backbone, in_channels=in_channels, num_classes=3, decoder_channels=32).eval()
    with torch.no_grad():
        out = net(torch.rand(1, in_channels, 250, 370))
    assert out.shape == (1, 3, 250, 370)
    assert torch.isfinite(out).all()


def test_bins_dropout_and_output_stride_are_configurable():
    net = PSPNet("resnet18", bins=(1, 2), output_stride=16, dropout=0.5, decoder_channels=16)
    assert net.encoder.output_stride == 16
    assert [b.bins for b in net.decoder.ppm.branches] == [1, 2]
    assert net.decoder.bottleneck[-1].p == 0.5


@pytest.mark.parametrize(
    "size", [(1, 1), (2, 3), (5, 5), (7, 7), (8, 8), (9, 13), (16, 16), (17, 23), (31, 8), (32, 47), (64, 64)]
)
def test_matrix_pooling_equals_adaptive_avg_pool(size):
    x = torch.randn(2, 4, *size)
    for bins in (1, 3, 5, 7):
        torch.testing.assert_close(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins), atol=1e-5, rtol=1e-5)


def test_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(source.conv1.weight, 0.125)
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    encoder = Encoder("resnet18", in_channels=3, weights_path=str(path))
    torch.testing.assert_close(encoder.body.conv1.weight, source.conv1.weight)
    gray = Encoder("resnet18", in_channels=1, weights_path=str(path))
    assert gray.body.conv1.weight.shape[1] == 1  # timm folds RGB weights into one channel
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Encoder("resnet18", weights_path=str(tmp_path / "missing.safetensors"))


def test_hub_download_offline_gives_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="weights_path"):
        Encoder("resnet18", pretrained=True)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = PSPNet("resnet18", in_channels=1, num_classes=2, decoder_channels=16, dropout=0.0)
    checkpointed = PSPNet(
        "resnet18", in_channels=1, num_classes=2, decoder_channels=16, dropout=0.0, grad_checkpointing=True
    )
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 64, 64)
    for net in (plain, checkpointed):
        net.train()
        net(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_channels_last_module_gives_the_same_logits():
    cfg = dict(
        net={"_target_": "medseg.models.PSPNet", "encoder_name": "mobilenetv3", "in_channels": 1},
        loss={"_target_": "medseg.losses.HybridLoss"},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
    )
    torch.manual_seed(0)
    nchw = SegmentationModule(**cfg, channels_last=False).eval()
    nhwc = SegmentationModule(**cfg, channels_last=True).eval()
    nhwc.load_state_dict(nchw.state_dict())
    assert nhwc.net.segmentation_head.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(nhwc(x), nchw(x), atol=1e-5)


PINNED = {  # mean, std, logit[1, 10, 10], logit[0, 50, 3] of a seeded network on a fixed ramp image
    "mobilenetv3": (0.112569, 0.044113, 0.156356, 0.068049),
    "efficientnet_b0": (-0.076917, 0.067954, -0.008965, -0.144868),
    "resnet18": (-0.107012, 0.046928, -0.057593, -0.152607),
    "convnext_tiny": (0.068833, 0.098398, 0.1134, -0.026521),
}


@pytest.mark.parametrize("backbone", list(PINNED))
def test_logits_match_the_pinned_values(backbone):
    """A refactor that changes what the network computes (layers, init order, pooling) is noticed here."""
    torch.manual_seed(0)
    net = PSPNet(backbone, in_channels=1, num_classes=2, decoder_channels=32).eval()
    x = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64)
    with torch.no_grad():
        y = net(x)
    values = (y.mean(), y.std(), y[0, 1, 10, 10], y[0, 0, 50, 3])
    assert [float(v) for v in values] == pytest.approx(PINNED[backbone], abs=2e-5)
