"""Resume robustness of the training loop (``training/loop.py`` used by the ``scratch`` recipe): runs killed before
the first checkpoint, resumes of finished runs, broken checkpoints, prune leftovers, the recorded process count,
the LR schedule and the Min-SNR weights. Tiny CPU runs of a few steps each."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segdrop.training import loop, train_scratch
from segdrop.training.bundle import load_bundle

from .test_training import TINY, read_losses, write_fake_dataset

STEPS = 4
LR = 5e-4  # ScratchConfig().lr; TINY sets warmup_steps 2


def strict_json(path: Path) -> dict:
    """Parse ``path`` as standard JSON: NaN / Infinity are not JSON and fail here."""

    def reject(token: str):
        raise ValueError(f"{path} holds {token}, which is not valid JSON")

    return json.loads(path.read_text(), parse_constant=reject)


def common(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(dataset), "--output_dir", str(out), "--steps", str(STEPS), "--checkpointing_steps", "2",
            "--caption_dropout", "0.5", *TINY, *extra]


def train_direct(argv: list[str]) -> dict:
    """``train_scratch.train`` on parsed flags, to see the returned result (``main`` returns only the exit code)."""
    config = train_scratch.resolve_config(train_scratch.build_parser().parse_args(argv))
    return train_scratch.train(config, "python -m segdrop.training scratch " + " ".join(argv))


def unet_state(out: Path) -> dict[str, torch.Tensor]:
    return load_bundle(out / "model").unet.state_dict()


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = unet_state(a), unet_state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_fake_dataset(tmp_path_factory.mktemp("toydata"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dataset) -> Path:
    """An uninterrupted 4-step run with checkpoints step_2 and step_4 (never modified: tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_scratch.main(common(dataset, out)) == 0
    return out


@pytest.fixture()
def run_copy(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# ------------------------------------------------------------------------------------------ recorded state


def test_finished_run_records_processes_lr_and_loss(finished):
    rows = [json.loads(x) for x in (finished / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # "lr" is the rate each step's update used: constant-with-warmup over 2 steps, one schedule step per update
    assert [r["lr"] for r in rows] == pytest.approx([0.0, LR / 2, LR, LR], rel=1e-12)
    state = strict_json(finished / "checkpoints" / "step_4" / "training_state.json")
    assert state["step"] == 4 and state["num_processes"] == 1
    assert state["batch_size"] == 4 and state["global_batch_size"] == 4
    assert state["loss"] == rows[-1]["loss"] and state["lr"] == rows[-1]["lr"]
    assert state["command"].startswith("python -m segdrop.training scratch --data_dir")
    card = strict_json(finished / "model" / "segdrop_model.json")
    assert card["num_processes"] == 1 and card["global_batch_size"] == 4
    assert card["final_loss"] == rows[-1]["loss"]
    header = (finished / "config.toml").read_text().splitlines()[:2]
    assert header[0].startswith("# written by: python -m segdrop.training scratch")
    assert header[1] == "# num_processes = 1; batch_size is per process: global batch = 4 x 1 = 4"
    # the header is comments only: the effective config still parses back to the run's settings
    again = train_scratch.resolve_config(train_scratch.build_parser().parse_args(["--config", str(finished / "config.toml")]))
    assert again.steps == STEPS and again.batch_size == 4 and again.output_dir == str(finished)


# ------------------------------------------------------------------------------------------ fix 1: killed before a checkpoint


def test_resume_before_first_checkpoint_restarts_the_loss_log(run_copy, finished, dataset):
    shutil.rmtree(run_copy / "checkpoints")  # killed after logging steps 1-4 but before any checkpoint
    assert len(read_losses(run_copy)) == STEPS
    assert train_scratch.main(common(dataset, run_copy, "--resume")) == 0
    rows = [json.loads(x) for x in (run_copy / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # no duplicated steps
    np.testing.assert_allclose(read_losses(run_copy), read_losses(finished), rtol=0, atol=1e-6)
    assert_same_weights(run_copy, finished)


def test_loss_log_reading_and_truncation(tmp_path):
    path = tmp_path / "loss.jsonl"
    path.write_text('{"step": 1, "loss": 1.0, "lr": 0}\n{"step": 2, "loss": 2.0, "lr": 0}\n'
                    '{"step": 1, "loss": 1.5, "lr": 0}\n{"step": 3, "loss": 3.0, "lr"')  # duplicate + torn line
    log = loop.LossLog(path)
    assert [(r["step"], r["loss"]) for r in log.rows()] == [(1, 1.5), (2, 2.0)]
    assert log.loss_at(2) == 2.0 and log.loss_at(3) is None
    log.truncate(1)
    assert path.read_text() == '{"step": 1, "loss": 1.5, "lr": 0}\n'
    log.truncate(0)
    assert path.read_text() == "" and log.rows() == []
    log.open()
    log.append(1, float("nan"), 1e-4)  # a diverged loss stays valid JSON
    log.close()
    assert json.loads(path.read_text()) == {"step": 1, "loss": None, "lr": 1e-4}
    assert not [p for p in tmp_path.iterdir() if p.name != "loss.jsonl"]  # atomic rewrite left no temp file


# ------------------------------------------------------------------------------------------ fix 2: resume a finished run


def test_resume_of_a_finished_run_writes_valid_json_with_the_final_loss(run_copy, finished, dataset):
    expected = read_losses(finished)[-1]
    result = train_direct(common(dataset, run_copy, "--resume"))
    assert result["steps"] == STEPS and result["final_loss"] == expected
    card = strict_json(run_copy / "model" / "segdrop_model.json")
    assert card["final_loss"] == expected and card["steps"] == STEPS
    assert card["first_loss"] == read_losses(finished)[0]
    assert_same_weights(run_copy, finished)
    # without the loss log the checkpoint state still knows the final loss
    (run_copy / "loss.jsonl").unlink()
    result = train_direct(common(dataset, run_copy, "--resume"))
    assert result["final_loss"] == expected
    card = strict_json(run_copy / "model" / "segdrop_model.json")
    assert card["final_loss"] == expected and card["first_loss"] is None


def test_json_writers_refuse_nan():
    assert loop.finite_or_none({"a": [1.0, float("nan")], "b": float("inf"), "c": 2}) == {"a": [1.0, None], "b": None, "c": 2}
    with pytest.raises(ValueError, match="non-finite"):
        loop.dumps_strict({"final_loss": float("nan")})


# ------------------------------------------------------------------------------------------ fix 3: broken checkpoints


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated weights", "garbage optimizer", "bad state json"])
def test_broken_latest_checkpoint_falls_back_to_the_previous(run_copy, finished, dataset, caplog, damage):
    latest = run_copy / "checkpoints" / "step_4"
    if damage == "truncated weights":
        _truncate(latest / "model.safetensors")
    elif damage == "garbage optimizer":
        (latest / "optimizer.bin").write_bytes(b"not a zip file at all")
    else:
        (latest / "training_state.json").write_text('{"step": 4, "loss"')
    with caplog.at_level(logging.WARNING, logger="segdrop.training.loop"):
        assert train_scratch.main(common(dataset, run_copy, "--resume")) == 0
    assert f"checkpoint {latest} does not load" in caplog.text and "falling back" in caplog.text
    # steps 3-4 were trained again from step_2 on the same curve; the broken folder is kept aside, not pruned over
    np.testing.assert_allclose(read_losses(run_copy), read_losses(finished), rtol=0, atol=1e-6)
    assert_same_weights(run_copy, finished)
    names = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert names == ["step_2", "step_4", "step_4.broken"]
    assert strict_json(latest / "training_state.json")["step"] == 4


def test_no_loadable_checkpoint_is_a_clear_error(run_copy, dataset, capsys):
    for name in ("step_2", "step_4"):
        _truncate(run_copy / "checkpoints" / name / "model.safetensors")
    assert train_scratch.main(common(dataset, run_copy, "--resume")) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "could be loaded" in err
    assert str(run_copy / "checkpoints" / "step_2") in err and str(run_copy / "checkpoints" / "step_4") in err
    assert "delete them to restart" in err
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step_2", "step_4"]  # nothing moved


# ------------------------------------------------------------------------------------------ fix 4: leftovers


def test_leftovers_of_interrupted_saves_and_prunes_are_cleaned(run_copy, finished, dataset):
    root = run_copy / "checkpoints"
    (root / "step_9").mkdir()  # emptied by an interrupted prune
    (root / "step_7").mkdir()
    shutil.copy(root / "step_4" / "model.safetensors", root / "step_7")  # half-deleted: no training_state.json
    (root / "step_5.tmp").mkdir()  # save killed before the rename
    (root / "step_1.deleting").mkdir()  # prune killed after the rename
    (root / "step_3.broken").mkdir()  # moved aside on purpose: kept
    assert sorted(p.name for p in loop.checkpoint_leftovers(run_copy)) == ["step_1.deleting", "step_5.tmp", "step_7", "step_9"]
    assert train_scratch.main(common(dataset, run_copy, "--resume")) == 0
    assert sorted(p.name for p in root.iterdir()) == ["step_2", "step_3.broken", "step_4"]
    assert_same_weights(run_copy, finished)  # resumed from the real latest checkpoint, step_4


def test_prune_keeps_the_newest_and_leaves_nothing_behind(tmp_path):
    for step in (1, 2, 3, 10):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step_{step}" / loop.STATE_FILE).write_text(json.dumps({"step": step}))
    removed = loop.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["step_1", "step_2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_10", "step_3"]
    assert [s for s, _ in loop.list_checkpoints(tmp_path)] == [3, 10]


# ------------------------------------------------------------------------------------------ fix 6: process count


def test_resume_with_another_process_count_is_refused(run_copy, dataset, capsys):
    state_file = run_copy / "checkpoints" / "step_4" / "training_state.json"
    state = json.loads(state_file.read_text())
    state.update(num_processes=2, global_batch_size=8, command="accelerate launch --multi_gpu --num_processes 2 -m x")
    state_file.write_text(json.dumps(state))
    assert train_scratch.main(common(dataset, run_copy, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {run_copy / 'checkpoints' / 'step_4'} was written by a run with 2 process(es)" in err
    assert "global batch 8 = batch_size 4 x 2" in err and "this launch has 1" in err
    assert "`accelerate launch --multi_gpu --num_processes 2 -m x --resume`" in err and "ACCELERATE_USE_CPU=1" in err


def test_checkpoint_without_recorded_process_count_resumes_as_one_process(run_copy, finished, dataset):
    for name in ("step_2", "step_4"):
        state_file = run_copy / "checkpoints" / name / "training_state.json"
        state = json.loads(state_file.read_text())
        del state["num_processes"]
        state_file.write_text(json.dumps(state))
    shutil.rmtree(run_copy / "checkpoints" / "step_4")
    assert train_scratch.main(common(dataset, run_copy, "--resume")) == 0
    np.testing.assert_allclose(read_losses(run_copy), read_losses(finished), rtol=0, atol=1e-6)


def test_relaunch_hint_and_launch_command():
    assert loop.launch_command("python -m segdrop.training scratch --steps 3", 1) == "python -m segdrop.training scratch --steps 3"
    assert (loop.launch_command("python -m segdrop.training scratch --steps 3", 4)
            == "accelerate launch --multi_gpu --num_processes 4 -m segdrop.training scratch --steps 3")
    assert loop.relaunch_hint(1) == "`python -m segdrop.training <recipe> ... --resume` (a single process)"
    assert "--num_processes 3" in loop.relaunch_hint(3) and "ACCELERATE_USE_CPU=1" in loop.relaunch_hint(3)


# ------------------------------------------------------------------------------------------ fix 5: LR schedule


def test_prepared_lr_schedule_steps_once_per_update_whatever_the_process_count(monkeypatch):
    """accelerate's AcceleratedScheduler steps num_processes times per call unless the accelerator was built with
    step_scheduler_with_optimizer=False; pretend there are 4 processes and count schedule steps."""
    import accelerate.scheduler
    from accelerate import Accelerator
    from diffusers.optimization import get_constant_schedule_with_warmup

    class FourProcesses:
        num_processes = 4

    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", FourProcesses)

    def lrs_after(accelerator, updates: int) -> list[float]:
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        schedule = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=8)
        model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
        seen = []
        for _ in range(updates):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return seen

    assert lrs_after(loop.make_accelerator(), 4) == pytest.approx([0, 1 / 8, 2 / 8, 3 / 8])
    assert lrs_after(Accelerator(), 3) == pytest.approx([0, 4 / 8, 8 / 8])  # the bug this guards against
    with pytest.raises(ValueError, match="once per process"):
        loop.make_accelerator(step_scheduler_with_optimizer=True)


# ------------------------------------------------------------------------------------------ fix 7: Min-SNR


@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_weights_match_the_previous_formula(gamma):
    scheduler = train_scratch.make_scheduler()
    timesteps = torch.arange(scheduler.config.num_train_timesteps)
    ac = scheduler.alphas_cumprod
    snr_old = ac[timesteps] / (1 - ac[timesteps])  # the formula train_scratch used before compute_snr
    old = torch.clamp(snr_old, max=gamma) / snr_old
    new = loop.min_snr_weights(scheduler, timesteps, gamma)
    assert new.dtype == torch.float32 and new.shape == timesteps.shape
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)  # compute_snr squares sqrt ratios: ~2 ulp apart
    assert torch.all(new[snr_old < gamma * 0.999] == 1)  # low SNR (noisy) steps keep full weight
    assert torch.all(new <= 1) and new[0] < new[-1]  # high SNR (clean) steps are down-weighted
