"""The import rules of docs/ARCHITECTURE.md, read from the source: each layer imports only
the layers below it, and no capability imports another."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "fleetimg"
# The layers, lowest first (docs/ARCHITECTURE.md).
MODEL = {"nodestate"}
CAPABILITIES = {"build", "push", "sdcard", "apply", "workload"}
LAB = {"lab"}
FRONT = {"cli", "__main__"}


def units(package: Path = PACKAGE) -> set[str]:
    """fleetimg's top-level modules and packages."""
    return {p.stem for p in package.glob("*.py")} | {
        p.name for p in package.iterdir() if (p / "__init__.py").exists()}


def imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Which of fleetimg's top-level units each unit imports (a package as one unit)."""
    known = units(package)
    found: dict[str, set[str]] = defaultdict(set)
    for path in package.rglob("*.py"):
        unit = path.relative_to(package).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "fleetimg" and len(parts) > 1 and parts[1] in known \
                        and parts[1] != unit:
                    found[unit].add(parts[1])
    return found


def test_each_layer_imports_only_the_layers_below() -> None:
    graph = imports()
    core = units() - MODEL - CAPABILITIES - LAB - FRONT
    allowed = {**{u: core for u in core}, **{u: core for u in MODEL},
               **{u: core | MODEL for u in CAPABILITIES},
               "lab": core | MODEL | {"sdcard"},  # the lab boots the cards sdcard writes
               "cli": units() - {"__main__"}, "__main__": {"cli"}}
    wrong = {u: sorted(graph[u] - allowed[u]) for u in graph if graph[u] - allowed[u]}
    assert wrong == {}


def test_apply_and_sdcard_share_the_node_model_not_each_other() -> None:
    graph = imports()
    assert "nodestate" in graph["apply"] and "nodestate" in graph["sdcard"]
    assert "sdcard" not in graph["apply"] and "apply" not in graph["sdcard"]


def test_the_reader_finds_every_form_of_import(tmp_path: Path) -> None:
    package = tmp_path / "fleetimg"
    for unit in ("apply", "sdcard", "push"):
        (package / unit).mkdir(parents=True)
        (package / unit / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "apply" / "engine.py").write_text(
        "from fleetimg.sdcard.ext4 import Ext4\nimport fleetimg.push.plan\n"
        "from fleetimg import errors\nfrom fleetimg.apply import board\n")
    assert imports(package) == {"apply": {"sdcard", "push", "errors"}}
