"""A checkpoint is data: interpolations, foreign classes and bad values are refused in one line, and run nothing."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from medseg.deploy.export import main as export_main
from medseg.deploy.predict import main as predict_main
from medseg.evaluation.evaluate import main as eval_main
from medseg.training.pipeline import train
from medseg.utils.checkpoint import UnsafeCheckpoint
from medseg.utils.registry import build, matches

from .helpers import one_error_line


class _WritesMarker:
    """A pickle that writes a file when it is unpickled (what `torch.load(weights_only=False)` would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def _write_text_payload(marker: Path) -> str:
    """The interpolation that writes MARKER while OmegaConf resolves it."""
    return (
        "${oc.create:{_target_: builtins.min, _args_: [0.2, {_target_: pathlib.Path.write_text, "
        f"self: {{_target_: pathlib.Path, _args_: ['{marker}']}}, data: y}}]}}}}"
    )


def _nested_load_payload(pickle_path: Path) -> str:
    """The interpolation that unpickles PICKLE_PATH with weights_only=false while OmegaConf resolves it."""
    return (
        "${oc.create:{_target_: builtins.min, _args_: [0.2, {_target_: torch.load, "
        f"f: '{pickle_path}', weights_only: false}}]}}"
    )


@pytest.fixture
def payload_checkpoints(demo_checkpoint, tmp_path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """Checkpoints carrying a payload in hyper_parameters.net.dropout with the refusal each must get; the
    marker files the payloads would write."""
    markers = [tmp_path / "written.txt", tmp_path / "unpickled.txt", tmp_path / "instantiated.txt"]
    pickle_path = tmp_path / "payload.pkl"
    pickle_path.write_bytes(pickle.dumps(_WritesMarker(markers[1])))
    nested = {
        "_target_": "pathlib.Path.write_text",
        "self": {"_target_": "pathlib.Path", "_args_": [str(markers[2])]},
        "data": "import os  # runs at every interpreter start",
    }
    payloads = (
        ("write", _write_text_payload(markers[0]), "interpolation"),
        ("load", _nested_load_payload(pickle_path), "interpolation"),
        ("nested", nested, "names 'pathlib.Path.write_text', which is not a medseg network"),
    )
    checkpoints = []
    for name, payload, refusal in payloads:
        state = torch.load(demo_checkpoint, map_location="cpu", weights_only=True)
        state["hyper_parameters"]["net"]["dropout"] = payload
        torch.save(state, tmp_path / f"{name}.ckpt")
        checkpoints.append((tmp_path / f"{name}.ckpt", refusal))
    return checkpoints, markers


def test_payloads_are_refused_by_every_door_and_run_nothing(payload_checkpoints, demo_root, make_cfg, tmp_path, capsys):
    checkpoints, markers = payload_checkpoints
    image = next((demo_root / "images").rglob("*.dcm"))
    for path, refusal in checkpoints:
        for prog, entry, args in (
            ("medseg-predict", predict_main, [str(path), str(image), "--out", str(tmp_path / "p")]),
            ("medseg-export", export_main, [str(path), "--out", str(tmp_path / "m.onnx")]),
            ("medseg-eval", eval_main, [str(path), str(demo_root), "--out", str(tmp_path / "e")]),
        ):
            with pytest.raises(SystemExit) as exit_info:
                entry(args)
            assert exit_info.value.code == 2
            line = one_error_line(capsys, prog)
            assert str(path) in line and refusal in line and "hyper_parameters.net.dropout" in line, line
        for key in ("init_from", "ckpt_path"):
            cfg = make_cfg([f"{key}={path}", "trainer.fast_dev_run=true", "data.image_size=64"])
            with pytest.raises(UnsafeCheckpoint, match="refused"):
                train(cfg)
    assert not any(m.exists() for m in markers)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "p").exists()


def test_a_bad_value_or_a_weights_path_in_a_checkpoint_ends_in_one_line(demo_checkpoint, demo_root, tmp_path, capsys):
    image = next((demo_root / "images").rglob("*.dcm"))
    pickle_path = tmp_path / "weights.pth"
    pickle_path.write_bytes(pickle.dumps(_WritesMarker(tmp_path / "unpickled.txt")))
    for name, key, value, expected in (
        ("dropout", "dropout", 5, "net.dropout: expected a number in [0, 1)"),
        ("typed", "dropout", "0.2", "net.dropout: expected float"),
        ("unknown", "shell", "ls", "net.shell: not an argument of PSPNet"),
    ):
        state = torch.load(demo_checkpoint, map_location="cpu", weights_only=True)
        state["hyper_parameters"]["net"][key] = value
        path = tmp_path / f"{name}.ckpt"
        torch.save(state, path)
        with pytest.raises(SystemExit):
            predict_main([str(path), str(image), "--out", str(tmp_path / name)])
        line = one_error_line(capsys, "medseg-predict")
        assert str(path) in line and expected in line, line
    # a weights_path in a checkpoint is never read: the state dict holds every weight
    state = torch.load(demo_checkpoint, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["net"]["weights_path"] = str(pickle_path)
    path = tmp_path / "weights.ckpt"
    torch.save(state, path)
    predict_main([str(path), str(image), "--out", str(tmp_path / "weights")])
    assert list((tmp_path / "weights").glob("*_mask.png")) and not (tmp_path / "unpickled.txt").exists()


def test_a_pickle_as_encoder_weights_is_refused_in_one_line(make_cfg, tmp_path):
    pickle_path = tmp_path / "weights.pth"
    pickle_path.write_bytes(pickle.dumps(_WritesMarker(tmp_path / "unpickled.txt")))
    cfg = make_cfg([f"model.net.weights_path={pickle_path}", "trainer.fast_dev_run=true", "data.image_size=64"])
    with pytest.raises(ValueError, match="not readable encoder weights"):
        train(cfg)
    assert not (tmp_path / "unpickled.txt").exists()


def test_the_registry_builds_plain_specs_and_refuses_the_rest():
    net = build({"_target_": "medseg.models.PSPNet", "encoder_depth": 2, "decoder_channels": 8}, "net")
    assert net.segmentation_head.out_channels == 2
    optimizer = build({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}, "optimizer")
    assert optimizer(params=net.parameters()).defaults["lr"] == 1e-3
    for spec, message in (
        ({"_target_": "builtins.open", "file": "/etc/passwd"}, "not a medseg network"),
        ({"_target_": "medseg.losses.DiceLoss", "smooth": {"_target_": "os.getcwd"}}, "not a medseg network"),
        ({"_target_": "medseg.losses.DiceLoss", "smooth": {"_target_": "torch.optim.SGD"}}, "may not name a class"),
        ({"_target_": "medseg.losses.DiceLoss", "smooth": "${oc.env:HOME}"}, "interpolation"),
        ({"_target_": "medseg.losses.DiceLoss", "smooth": object()}, "not plain data"),
    ):
        with pytest.raises(ValueError, match=message):
            build(spec, "loss")
    assert matches([1, 3], list[int]) and not matches([1, "3"], list[int]) and matches(None, int | None)
    assert matches(2, float) and not matches(True, int) and matches((0.9, 0.99), tuple[float, float])


def test_checkpoints_naming_the_published_paths_still_load(demo_checkpoint, demo_root, make_cfg, tmp_path):
    state = torch.load(demo_checkpoint, map_location="cpu", weights_only=True)
    hparams = state["hyper_parameters"]
    hparams["net"]["_target_"] = "medseg.models.pspnet.PSPNet"
    hparams["loss"] = {"_target_": "medseg.losses.DiceLoss", "smooth": 1.0}
    hparams["scheduler"] = {"_target_": "medseg.schedulers.WarmupCosineLR", "_partial_": True, "T_max": 2}
    path = tmp_path / "published.ckpt"
    torch.save(state, path)
    image = next((demo_root / "images").rglob("*.dcm"))
    predict_main([str(path), str(image), "--out", str(tmp_path / "p")])
    eval_main([str(path), str(demo_root), "--out", str(tmp_path / "e"), "--worst", "0"])
    assert list((tmp_path / "p").glob("*_mask.png")) and (tmp_path / "e" / "summary.csv").is_file()
    cfg = make_cfg([f"init_from={path}", "trainer.fast_dev_run=true", "data.image_size=64", "test=false"])
    train(cfg)
