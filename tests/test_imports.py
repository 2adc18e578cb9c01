"""The package's import graph points one way: no module imports, directly or through others, one that imports it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "medseg"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """medseg module -> medseg modules it imports anywhere in its body (function-level imports too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medseg"):
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
                targets.add(next(c for c in candidates if c in modules))
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = targets - {name}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path, node, nxt][path.index(nxt) if nxt in path else 0 :]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


STAGES = ("models", "data", "training", "deploy", "evaluation", "node")
# stage -> stages it may not import (directly; a cycle test above covers the indirect paths)
FORBIDDEN = {
    "leaf": set(STAGES) | {"config"},
    "models": {"data", "training", "deploy", "evaluation", "node", "config"},
    "data": {"models", "training", "deploy", "evaluation", "node", "config"},
    "deploy": {"training", "node", "config"},
    "evaluation": {"training", "node", "config"},
    "node": {"training", "evaluation", "config"},  # the scanner-side runtime: no torch
    "training": set(),
}


def stage_of(module: str) -> str:
    """The pipeline stage of a medseg module: one of STAGES, 'config', or 'leaf' (losses, metrics, utils, ...)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (*STAGES, "config"):
        return parts[1]
    return "leaf"


def test_arrows_point_from_later_stages_to_earlier_ones():
    arrows = {
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if stage_of(target) in FORBIDDEN.get(stage_of(module), set())
    }
    assert not arrows, sorted(arrows)


def test_the_top_level_holds_at_most_six_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 6, modules


def test_every_target_in_the_config_tree_resolves():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    from medseg.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    targets = set()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for overrides in ([], ["logger=many", "callbacks=ema", "data=stream", "hparams_search=optuna"]):
            cfg = OmegaConf.to_container(compose("config", overrides=overrides, return_hydra_config=True))

            def walk(node) -> None:
                if isinstance(node, dict):
                    if isinstance(node.get("_target_"), str):
                        targets.add(node["_target_"])
                    for value in node.values():
                        walk(value)
                elif isinstance(node, list):
                    for value in node:
                        walk(value)

            walk(cfg)
    GlobalHydra.instance().clear()
    medseg_targets = {t for t in targets if t.startswith("medseg.")}
    assert "medseg.config.RunFolderCheck" in medseg_targets and len(medseg_targets) > 5
    for target in medseg_targets:
        assert get_object(target) is not None, target


GEOMETRY_PATTERNS = (  # a hand-written LPS <-> RAS flip, a slice normal, or a step between slice positions
    r"\[\s*-1(\.0)?\s*,\s*-1(\.0)?\s*,\s*1(\.0)?",
    r"np\.cross\(",
    r"np\.diff\([^)]*position",
    r"ImagePositionPatient.*-\s*origin",
)


def test_patient_space_geometry_lives_in_one_module():
    """No LPS/RAS flip, slice normal or slice-step computation outside medseg.data.geometry."""
    import re

    owner = PACKAGE / "data" / "geometry.py"
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != owner
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(re.search(pattern, line) for pattern in GEOMETRY_PATTERNS)
    ]
    assert not found, found
    assert re.search(GEOMETRY_PATTERNS[0], owner.read_text())  # the patterns do find the owner's own


def test_predict_eval_node_and_prepare_reach_series_geometry_through_the_geometry_module_only():
    graph = import_graph()
    users = ("medseg.deploy.predict", "medseg.deploy.seg", "medseg.evaluation.volumes", "medseg.node.rules")
    users += ("medseg.data.index", "medseg.data.volume_grid", "medseg.data.nifti", "medseg.data.labels")
    for module in users:
        assert "medseg.data.geometry" in graph[module], module
    assert "medseg.data.series" not in graph  # the copies it replaced are gone
