"""Prepared, streamed data (litdata): prepare, train, DDP sharding, mid-epoch resume, fractions, corrupt chunks."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from litdata import StreamingDataLoader
from omegaconf import open_dict

from medseg.data.datamodule import SegmentationDataModule
from medseg.data.prepare import prepare
from medseg.data.prepared import read_metadata
from medseg.data.stream import SegmentationStream, StreamDataModule
from medseg.training.pipeline import train
from medseg.utils.privacy import pseudonym

from .helpers import kill_when, read_ids, run_train, start_train

SIZE = 64


@pytest.fixture(scope="module")
def zstd_prepared(demo_root, tmp_path_factory) -> Path:
    """The demo prepared as the `prepared` fixture is, with zstd chunks."""
    out = tmp_path_factory.mktemp("zstd") / "demo"
    prepare(demo_root, out, workers=2, image_size=SIZE, compression="zstd")
    return out


def stream_cfg(make_cfg, prepared: Path, extra: list[str], out: Path):
    return make_cfg(
        ["data=stream", f"data.root={prepared}", "data.batch_size=4", "model.log_images=false", *extra], out
    )


def record_ids(cfg, path: Path) -> None:
    with open_dict(cfg):
        cfg.callbacks.record_ids = {"_target_": "tests.helpers.RecordIds", "path": str(path)}


def test_prepare_writes_splits_and_reruns_as_noop(prepared, demo_root):
    meta = read_metadata(prepared)
    assert {k: v["items"] for k, v in meta["splits"].items()} == {"train": 64, "val": 16, "test": 16}
    assert meta["settings"]["image_size"] == [SIZE, SIZE] and meta["splits"]["train"]["patient_items"] == [8] * 8
    volumes = meta["splits"]["test"]["volumes"]  # for the test step's per-volume scores
    assert [len(v["items"]) for v in volumes] == [8, 8] and all(v["spacing"] == [5.0, 6.0, 6.0] for v in volumes)
    assert StreamDataModule(str(prepared)).volumes("test") == volumes
    assert [len(v["items"]) for v in StreamDataModule(str(prepared)).volumes("val")] == [8, 8]
    stamp = (prepared / "medseg.json").stat().st_mtime_ns
    chunks = {p: p.stat().st_mtime_ns for p in prepared.rglob("*.bin")}
    again = prepare(demo_root, prepared, workers=1, image_size=SIZE)
    assert again == meta and (prepared / "medseg.json").stat().st_mtime_ns == stamp
    assert chunks == {p: p.stat().st_mtime_ns for p in prepared.rglob("*.bin")}
    text = " ".join(p.read_text(errors="ignore") for p in prepared.rglob("*") if p.is_file())
    assert "DEMO-" not in text  # patients only as keyed pseudonyms


def test_prepare_leaves_the_start_method_of_a_threaded_process_alone(demo_root, tmp_path):
    """litdata's workers are forked from a clean fork server, not from this process with its threads running; litdata
    sets the start method of the process that runs it, which is not this one."""
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        torch.ones(256, 256) @ torch.ones(256, 256)  # torch's intra-op threads are up
        meta = prepare(demo_root, tmp_path / "prepared", image_size=32)
        assert multiprocessing.get_start_method() == "spawn"
    finally:
        multiprocessing.set_start_method(before, force=True)
    assert {name: split["items"] for name, split in meta["splits"].items()} == {"train": 64, "val": 16, "test": 16}


def test_stream_trains_with_fast_dev_run(make_cfg, prepared, tmp_path):
    cfg = stream_cfg(make_cfg, prepared, ["trainer.fast_dev_run=true"], tmp_path / "run")
    assert cfg.data.class_names == ["background", "organ", "lesion"] and cfg.data.image_size == [SIZE, SIZE]
    _, metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.mark.parametrize("labelled", [1.0, 0.5])
def test_data_fraction_selects_the_same_patients_as_in_memory(prepared, demo_root, labelled):
    memory = SegmentationDataModule(
        root=str(demo_root), image_size=SIZE, split_file=None, preload=False, labelled_fraction=labelled
    )
    memory.setup()
    stream = StreamDataModule(str(prepared), labelled_fraction=labelled)
    sizes = []
    for fraction in (0.2, 0.6, 1.0):
        memory.data_fraction = stream.data_fraction = fraction
        expected = Counter(pseudonym(s.patient) for s in memory.train_samples())
        dataset = stream.dataset("train")
        seen = Counter(dataset[i]["patient"] for i in range(len(dataset)))
        assert seen == expected, fraction
        sizes.append(len(seen))
    assert sizes[0] < sizes[-1] and (labelled == 1.0) == (sizes[-1] == len(memory.patients["train"]))


@pytest.mark.slow
def test_ddp_sim_sees_every_training_sample_once_per_epoch(make_cfg, prepared, tmp_path):
    cfg = stream_cfg(
        make_cfg, prepared, ["trainer=ddp_sim", "stage.stages.0.epochs=2", "test=false", "data.num_workers=0"], tmp_path
    )
    record_ids(cfg, tmp_path / "ids.jsonl")
    train(cfg)
    records = read_ids(tmp_path / "ids.jsonl")
    for epoch in (0, 1):
        per_rank = {r: [i for x in records if x["epoch"] == epoch and x["rank"] == r for i in x["ids"]] for r in (0, 1)}
        assert len(per_rank[0]) == len(per_rank[1]) == 32  # sharded: half each
        assert sorted(per_rank[0] + per_rank[1]) == list(range(64))  # every sample exactly once
    first = [i for x in records if x["epoch"] == 0 for i in x["ids"]]
    second = [i for x in records if x["epoch"] == 1 for i in x["ids"]]
    assert first != second  # reshuffled per epoch


def test_corrupt_chunk_is_named(prepared, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    chunk = sorted((broken / "train").glob("*.bin"))[0]
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        StreamDataModule(str(broken)).setup("fit")


@pytest.mark.slow
def test_corrupt_chunk_ends_train_py_in_one_line(prepared, tmp_path, cache_dir):
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    chunk = sorted((broken / "train").glob("*.bin"))[0]
    chunk.write_bytes(chunk.read_bytes()[:1000])
    result = run_train(
        ["data=stream", f"data.root={broken}", "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path / 'run'}"],
        cache_dir,
        check=False,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(chunk) in lines[0] and "corrupt or truncated" in lines[0]


def _last_step(checkpoint: Path) -> int | None:
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]
    except Exception:  # absent or being replaced
        return None


@pytest.mark.slow
def test_killed_mid_epoch_resumes_without_repeating_or_skipping(prepared, cache_dir, make_cfg, tmp_path):
    run, resumed = tmp_path / "run", tmp_path / "resumed"
    args = [
        "data=stream",
        f"data.root={prepared}",
        "data.batch_size=4",  # 64 training slices: 16 steps per epoch
        "stage.stages.0.epochs=2",
        "callbacks.step_checkpoint.every_n_train_steps=3",
        "callbacks.progress_bar=null",
        "test=false",
        "model.log_images=false",
        "+callbacks.record_ids._target_=tests.helpers.RecordIds",
    ]
    killed = [f"hydra.run.dir={run}", f"+callbacks.record_ids.path={run}.jsonl", "+callbacks.record_ids.delay=0.3"]
    proc = start_train([*args, *killed], cache_dir)
    last = run / "checkpoints" / "last.ckpt"
    assert kill_when(proc, lambda: 16 < (_last_step(last) or 0) < 30)  # a step checkpoint inside the second epoch
    saved = _last_step(last)
    assert saved is not None and 16 < saved < 32, saved
    train(make_cfg([*args, f"+callbacks.record_ids.path={resumed}.jsonl", f"ckpt_path={last}"], resumed))
    first, second = read_ids(f"{run}.jsonl"), read_ids(f"{resumed}.jsonl")
    assert second[0]["step"] == saved + 1  # the resumed run starts right after the checkpoint
    before = [r for r in first if r["epoch"] == 1 and r["step"] <= saved]
    after = [r for r in second if r["epoch"] == 1]
    epoch = [i for r in before + after for i in r["ids"]]
    assert sorted(epoch) == list(range(64)), (len(epoch), Counter(epoch).most_common(3))
    final = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 32
    assert json.loads(json.dumps(final["loops"]["fit_loop"]["epoch_progress"]["current"]))["processed"] == 2


@pytest.mark.parametrize("chunks", ["prepared", "zstd_prepared"])
def test_a_stream_resumed_after_any_batch_yields_every_sample_once(request, chunks):
    folder = request.getfixturevalue(chunks)  # raw and zstd chunks, two per split (two prepare workers)

    def epoch(limit: int | None) -> StreamingDataLoader:
        stream = SegmentationStream(f"{folder}/train", limit=limit, shuffle=True, drop_last=True, seed=42)
        loader = StreamingDataLoader(stream, batch_size=4, num_workers=0, drop_last=True)
        loader.current_epoch = 1
        return loader

    for limit in (None, 40):  # the whole split, and a data fraction that ends inside a chunk
        expected = sorted(i for batch in epoch(limit) for i in batch["id"].tolist())
        assert len(expected) == (limit or 64)
        for stop in range(1, len(expected) // 4):
            killed, seen = epoch(limit), []
            for batch in itertools.islice(killed, stop):
                seen += batch["id"].tolist()
            resumed = epoch(limit)
            resumed.load_state_dict(killed.state_dict())
            seen += [i for batch in resumed for i in batch["id"].tolist()]
            assert sorted(seen) == expected, (limit, stop, Counter(seen).most_common(2))


def _tampered(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(prepared, copy)
    return copy


def test_flipped_bytes_in_a_chunk_are_caught_by_its_checksum(prepared, tmp_path):
    broken = _tampered(prepared, tmp_path)
    chunk = sorted((broken / "train").glob("*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[-200:-136] = bytes(b ^ 0xFF for b in data[-200:-136])  # 64 bytes flipped, same size
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{chunk}: chunk content differs .*checksum"):
        StreamDataModule(str(broken)).setup("fit")


def test_edited_counts_in_medseg_json_are_caught(prepared, tmp_path):
    broken = _tampered(prepared, tmp_path)
    meta = json.loads((broken / "medseg.json").read_text())
    meta["splits"]["train"]["items"] = 8
    meta["splits"]["train"]["patient_items"] = [8]
    (broken / "medseg.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="items in the chunks; medseg.json records other counts"):
        StreamDataModule(str(broken)).setup("fit")


def test_context_stacks_are_prepared_as_the_data_module_stacks_them(make_cfg, demo_root, tmp_path):
    out = tmp_path / "context"
    meta = prepare(demo_root, out, workers=1, image_size=SIZE, context_slices=1)
    assert meta["settings"]["context_slices"] == 1
    streamed = StreamDataModule(str(out)).dataset("val")
    memory = SegmentationDataModule(image_size=SIZE, context_slices=1, cache_dir=str(demo_root.parent))
    memory.setup()
    expected = memory.dataset("val")
    assert len(streamed) == len(expected)
    for i in (0, 7, 8):  # first and last slice of a series, and the next series' first
        image = streamed[i]["image"]
        assert image.shape == (3, SIZE, SIZE)
        torch.testing.assert_close(image, expected[i]["image"], atol=1e-3, rtol=0)  # stored as float16
    cfg = stream_cfg(make_cfg, out, ["trainer.fast_dev_run=true", "data.context_slices=1"], tmp_path / "run")
    assert cfg.model.net.in_channels == 3
    _, metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_zstd_chunks_are_smaller_than_raw_ones_and_stream_the_same_batches(prepared, zstd_prepared):
    compressed = read_metadata(zstd_prepared)
    assert compressed["splits"]["val"]["items"] == 16 and compressed["compression"] == "zstd"
    assert json.loads((prepared / "medseg.json").read_text())["compression"] is None
    size = {folder: sum(p.stat().st_size for p in folder.rglob("*.bin")) for folder in (prepared, zstd_prepared)}
    assert size[zstd_prepared] < 0.8 * size[prepared]
    batches = []
    for folder in (prepared, zstd_prepared):
        datamodule = StreamDataModule(str(folder), batch_size=4)
        datamodule.setup("validate")
        batches.append(next(iter(datamodule.val_dataloader())))
    assert torch.equal(batches[0]["image"], batches[1]["image"]) and torch.equal(batches[0]["mask"], batches[1]["mask"])
