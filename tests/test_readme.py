"""Every Python example of the README runs as written, against the shipped default model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs_as_written(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"readme_example_{index}"}
    exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102
    assert capsys.readouterr().out.strip(), "each example prints what it found"
    if "mask" in namespace:  # the foreground example: a boolean mask at the image's size
        assert namespace["mask"].shape == namespace["scene"].size and namespace["mask"].dtype == np.bool_
    if "labels" in namespace:  # the DiffSeg example: labels at the image's size, a few segments
        assert namespace["labels"].shape == namespace["scene"].size and 1 < namespace["segments"].counts[0] <= 256
    if "evaluation" in namespace:
        results = namespace["evaluation"].results
        assert all(0.0 <= v <= 1.0 for table in ("foreground_iou", "segmentation_miou") for v in results[table].values())
