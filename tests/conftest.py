"""Shared fixtures: the node glue imported against a minimal comfy_api stand-in (see fake_comfy_api.py)."""

from __future__ import annotations

import sys
import types

import pytest

from .fake_comfy_api import build_module


@pytest.fixture()
def nodes(monkeypatch):
    package = types.ModuleType("comfy_api")
    latest = build_module()
    package.latest = latest
    monkeypatch.setitem(sys.modules, "comfy_api", package)
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    for name in [n for n in sys.modules if n.startswith("segdrop.nodes")]:
        monkeypatch.delitem(sys.modules, name)
    import segdrop.nodes as glue

    yield glue
    for name in [n for n in sys.modules if n.startswith("segdrop.nodes")]:
        del sys.modules[name]
