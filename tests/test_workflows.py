"""The shipped workflows are current, well-linked, and use the nodes' real widget order."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import segdrop

FOLDER = Path(segdrop.__file__).parent / "workflows"
_spec = importlib.util.spec_from_file_location("segdrop_build_workflows", FOLDER / "build_workflows.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
WIDGET_TYPES = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_files_are_generated_from_the_description(name, tmp_path):
    build.write_all(tmp_path)
    for suffix in (".json", ".api.json"):
        assert json.loads((tmp_path / f"{name}{suffix}").read_text()) == json.loads((FOLDER / f"{name}{suffix}").read_text())


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_links_point_at_existing_nodes_and_slots(name):
    ui = json.loads((FOLDER / f"{name}.json").read_text())
    nodes = {node["id"]: node for node in ui["nodes"]}
    assert ui["version"] == 0.4
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        assert nodes[source]["outputs"][slot]["type"] == kind
        assert nodes[target]["inputs"][target_slot]["type"] == kind
        assert nodes[target]["inputs"][target_slot]["link"] == link_id


def test_pack_node_widgets_match_the_schemas(nodes):
    from segdrop.nodes import node_list

    for cls in node_list():
        schema = cls.define_schema()
        sockets, widgets, outputs = build.NODE_TYPES[schema.node_id]
        assert widgets == [s.id for s in schema.inputs if s.io_type in WIDGET_TYPES]
        assert [name for name, _ in sockets] == [s.id for s in schema.inputs if s.io_type not in WIDGET_TYPES]
        assert [kind for _, kind in outputs] == [s.io_type for s in schema.outputs]
