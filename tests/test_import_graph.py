"""The package's imports run one way through its layers (tools/import_graph.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_are_one_way_without_cycles(tool, capsys):
    graph = tool.build_graph()
    assert tool.check(graph) == [], "\n".join(tool.check(graph))
    assert tool.main(["--quiet"]) == 0
    assert "one-way imports, no cycle" in capsys.readouterr().out
    # what the layers are for: the model knows no ASE-facing module, the core no data
    # generation or training, and every module has a layer
    assert graph["model.definet"] <= {m for m in graph if tool.layer_of(m) in
                                      ("graph", "model")}
    assert not {m for m in graph["relaxer"] if tool.layer_of(m) in ("data", "train")}
    assert {tool.layer_of(m) for m in graph} == {name for name, _ in tool.LAYERS}
    # the folders show the layers: every core module lives in core/
    assert all(m.startswith("core") for m in graph if tool.layer_of(m) == "core")


def test_the_check_finds_upward_imports_and_cycles(tool):
    graph = {"graph": set(), "model.definet": {"relaxer"}, "relaxer": {"model.definet"},
             "demo": {"cli"}, "cli": {"demo"}}
    problems = tool.check(graph)
    assert "upward import: model.definet (model) imports relaxer (ase)" in problems
    assert "cycle: model.definet <-> relaxer" in problems
    assert "cycle: cli <-> demo" in problems
