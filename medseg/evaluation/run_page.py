"""report.html: one self-contained page (no network) for a training run or a sweep.

A run's page: the config summary, loss and Dice curves, the per-class test table and the worst test cases as
overlays (from `medseg-eval` of the best checkpoint on the run's test split). A sweep's page: its table and plots.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
from collections.abc import Sequence
from pathlib import Path

import yaml

from medseg.utils.io import atomic_path

log = logging.getLogger(__name__)

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.4em}
figcaption{font-size:.8em;color:#555}img{max-width:100%}.note{color:#666}
"""
SUMMARY_KEYS = {
    "backbone": ("model", "net", "encoder_name"),
    "encoder depth": ("model", "net", "encoder_depth"),
    "classes": ("data", "class_names"),
    "image size": ("data", "image_size"),
    "batch size": ("data", "batch_size"),
    "context": ("data", "context_slices"),
    "epochs": ("trainer", "max_epochs"),
    "precision": ("trainer", "precision"),
    "seed": ("seed",),
}
CURVES = {"loss": ("train/loss_epoch", "val/loss"), "Dice": ("val/dice_", "val/dice_best")}


def table(header: Sequence[str], rows: Sequence[Sequence], table_id: str = "") -> str:
    """An HTML table; floats with 4 decimals, every cell escaped."""
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table{ident}><tr>{head}</tr>{body}</table>"


def _mean_std(mean: str, std: str) -> str:
    """'mean +- std' of two CSV cells; n/a where no case defines the score (e.g. HD95 with empty masks)."""
    return "n/a" if mean in ("", "nan") else f"{float(mean):.4f} +- {float(std):.4f}"


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def image_tag(path: Path, caption: str = "") -> str:
    """A PNG file embedded as a data URI, with its caption."""
    data = base64.b64encode(path.read_bytes()).decode()
    text = html.escape(caption or path.stem)
    legend = f"<figcaption>{text}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{text}">{legend}</figure>'


def write_page(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write one HTML page of (heading, body HTML) sections, atomically."""
    parts = [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def config_summary(config: dict) -> list[tuple[str, str]]:
    """(setting, value) of the settings a reader compares runs by, stages included."""
    rows = []
    for label, keys in SUMMARY_KEYS.items():
        node: object = config
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            rows.append((label, ", ".join(map(str, node)) if isinstance(node, list) else str(node)))
    for stage in config.get("stage", {}).get("stages", []):
        settings = f"{stage.get('epochs')} epochs, lr {stage.get('lr')}, data {stage.get('data_fraction')}"
        rows.append((f"stage {stage.get('name')}", f"{settings}, augmentation {stage.get('aug_strength')}"))
    return rows


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard events as (step, value) lists; {} without events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "tensorboard"
    if not folder.is_dir():
        return {}
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def plot_curves(series: dict[str, list[tuple[int, float]]], out_dir: Path) -> list[Path]:
    """loss.png and dice.png: training and validation curves against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, prefixes in CURVES.items():
        tags = [t for t in sorted(series) if t.startswith(prefixes) and not t.endswith(("_step", "iou_mean"))]
        if not tags:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for tag in tags:
            ax.plot(*zip(*series[tag], strict=True), marker=".", label=tag)
        ax.set(xlabel="training step", ylabel=name, title=f"{name} per epoch")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out_dir / f"{name.lower()}.png"))
    return paths


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file medseg wrote."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_section(run_dir: Path, series: dict, evaluated: Path | None) -> str:
    """The per-class test table: mean +- std over test cases (volumes where the data are series) from
    medseg-eval where it ran, else the test step's whole-split scores."""
    if evaluated is not None:
        summary = read_csv(evaluated / "summary.csv")
        per_case = [r for r in summary if not r["metric"].endswith("_split")]
        rows = [(r["cls"], r["metric"], _mean_std(r["mean"], r["std"]), r["n"]) for r in per_case]
        return table(("class", "metric", "mean +- std over test cases", "cases"), rows, "test-scores")
    split = [(tag.removeprefix("test/"), values[-1][1]) for tag, values in sorted(series.items()) if "test/" in tag]
    if not split:
        return '<p class="note">no test scores: the run did not test (test=false or fast_dev_run)</p>'
    return table(("score (whole test split)", "value"), split, "test-scores")


def evaluate_run(run_dir: Path, config: dict, worst: int) -> Path | None:
    """medseg-eval of the run's best checkpoint on its test split, into RUN/report (reused when there); None
    where the run has no best checkpoint or its data are a prepared archive (evaluate the source folder)."""
    from medseg.data.synthetic import ensure_demo_dataset
    from medseg.evaluation.evaluate import evaluate

    out, best, data = run_dir / "report", run_dir / "checkpoints" / "best.ckpt", config.get("data", {})
    if (out / "summary.csv").is_file():
        return out
    if not best.is_file() or "stream" in str(data.get("_target_", "")) or not (run_dir / "split.json").is_file():
        return None
    root = Path(data["root"]) if data.get("root") else ensure_demo_dataset(data["cache_dir"])
    options = {key: data.get(key) for key in ("mask_threshold", "mask_mapping")}
    evaluate(best, root, out, worst=worst, patient_regex=data.get("patient_regex", r"^(.*)$"),
             split_file=run_dir / "split.json", split="test", **options)  # fmt: skip
    return out


def run_report(run_dir: str | Path, worst: int = 4) -> Path:
    """Write RUN_DIR/report.html for a training run; returns its path."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # plain data: nothing is resolved
    series = scalars(run_dir)
    evaluated = evaluate_run(run_dir, config, worst)
    curves = "".join(image_tag(p) for p in plot_curves(series, run_dir / "report"))
    sections = [
        ("Configuration", table(("setting", "value"), config_summary(config), "config")),
        ("Curves", curves or '<p class="note">no TensorBoard scalars in this run folder</p>'),
        ("Test scores", test_section(run_dir, series, evaluated)),
    ]
    if evaluated is not None:
        worst_cases = sorted((evaluated / "worst").glob("*.png"))
        shown = "".join(image_tag(p, f"Dice {p.stem.replace('_', ': ', 1)}") for p in worst_cases)
        sections.append(("Worst test cases (input, truth, prediction)", shown or "<p>none</p>"))
    return write_page(run_dir / "report.html", f"medseg run {run_dir.name}", sections)


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def markdown_html(markdown: str) -> str:
    """A markdown table (as sweep_table writes it) as an HTML table."""
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()]
    return table(lines[0], lines[2:])
