"""A real 2-process CPU training run (``accelerate launch --multi_gpu --num_processes 2`` with
``ACCELERATE_USE_CPU=1``, gloo): two processes run, the LR schedule follows the optimisation step as in a single
process, checkpoints are written once, 2 x batch 4 trains like 1 x batch 8, and a 1-process resume is refused.

Slow (about 30 s on 2 cores): marked ``slow``, so the default run deselects it and CI runs it
(``python -m pytest -m slow``). ``--cpu --num_processes 2`` is not used: with accelerate 1.x it runs one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segdrop.training import train_scratch

from .test_training import TINY

STEPS = 4
LR = 5e-4
WARMUP = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines() if x.strip()]


def args(out: Path, batch_size: int) -> list[str]:
    # --generate: both processes must agree on the rendered scenes (the main process renders, the other waits)
    return ["--generate", "6", "--output_dir", str(out), "--steps", str(STEPS), "--checkpointing_steps", "2",
            *TINY, "--batch_size", str(batch_size), "--warmup_steps", str(WARMUP)]


@pytest.mark.slow
def test_two_process_cpu_training(tmp_path, capsys):
    pytest.importorskip("segdrop.toyworld")
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HOME": str(tmp_path / "hf"),  # no user accelerate config
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "segdrop.training", "scratch"]
    proc = subprocess.run([*launch, *args(two, 4)], env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # two processes really ran, and recorded it
    state = json.loads((two / "checkpoints" / "step_4" / "training_state.json").read_text())
    assert state["num_processes"] == 2 and state["batch_size"] == 4 and state["global_batch_size"] == 8
    assert sorted(p.name for p in (two / "checkpoints" / "step_4").glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    card = json.loads((two / "model" / "segdrop_model.json").read_text())
    assert card["num_processes"] == 2 and card["global_batch_size"] == 8
    assert card["train_command"].startswith("accelerate launch --multi_gpu --num_processes 2 -m segdrop.training scratch")
    assert "# num_processes = 2; batch_size is per process: global batch = 4 x 2 = 8" in (two / "config.toml").read_text()

    # written once: one loss row per step, one "wrote checkpoint" per checkpoint, no leftovers
    assert [r["step"] for r in rows(two)] == [1, 2, 3, 4]
    assert log.count("wrote checkpoint") == 2
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_2", "step_4"]

    # the LR at step k is the single-process schedule's LR at step k (warmup is not N times faster), and
    # 2 processes x batch 4 train like 1 process x batch 8 (same global batch, gradients averaged)
    assert train_scratch.main(args(one, 8)) == 0
    expected = [LR * min(1.0, k / WARMUP) for k in range(STEPS)]
    assert [r["lr"] for r in rows(one)] == pytest.approx(expected, rel=1e-12)
    assert [r["lr"] for r in rows(two)] == [r["lr"] for r in rows(one)]
    np.testing.assert_allclose([r["loss"] for r in rows(two)], [r["loss"] for r in rows(one)], rtol=0, atol=1e-5)  # measured: 1.2e-7

    # resuming the 2-process run with 1 process is refused, saying how to relaunch
    capsys.readouterr()
    assert train_scratch.main(args(two, 4) + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "was written by a run with 2 process(es) (global batch 8 = batch_size 4 x 2)" in err
    assert "this launch has 1" in err and "accelerate launch --multi_gpu --num_processes 2" in err
    assert "ACCELERATE_USE_CPU=1" in err
    assert [r["step"] for r in rows(two)] == [1, 2, 3, 4]  # the refused resume touched nothing
