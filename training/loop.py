"""Recipe-independent training-loop plumbing shared by the training recipes (scratch today; inpaint, removal,
background and insertion next): checkpoints, the loss log, resume, run-state recording and an accelerate setup
whose learning-rate schedule does not depend on the process count.

Layout of a run folder (``out``)::

    loss.jsonl                     one JSON row per optimisation step: {"step", "loss", "lr"}; "lr" is the rate
                                   that step's update used. Truncated to the resumed step on --resume.
    checkpoints/step_N/            accelerator.save_state + training_state.json (written last, see below), and
                                   extra_state.safetensors when the recipe keeps more state (background's EMA)
    checkpoints/step_N.tmp         a checkpoint being written (renamed to step_N when complete)
    checkpoints/step_N.deleting    a checkpoint being pruned (renamed first, then removed)
    checkpoints/step_N.broken      a checkpoint that failed to load on resume, moved aside for inspection

accelerate writes the weights as ``model.safetensors`` and the optimizer, scheduler and RNG states as torch files that
it loads back with ``torch.load(weights_only=True)`` (tensors and plain containers only, no code); a recipe's own
state (an EMA) goes into ``extra_state.safetensors`` instead of accelerate's custom-state pickle.

A folder counts as a checkpoint only when it is named ``step_<digits>`` and holds ``training_state.json``;
anything else of the ``step_*`` shape except ``*.broken`` is a leftover of a killed save or prune and
``clean_checkpoint_leftovers`` removes it at start.

Distributed runs (``accelerate launch --num_processes N``): every process runs the same code; file writes happen
on the main process only, and decisions that must agree (which checkpoint loaded) are reduced over processes.
``make_accelerator`` sets ``step_scheduler_with_optimizer=False`` because accelerate otherwise steps a prepared
scheduler ``num_processes`` times per optimisation step (it assumes the schedule was written for one process
seeing the global batch), which made warmup finish N times faster with N processes.

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("segdrop.training.loop")

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step_"
STATE_FILE = "training_state.json"
EXTRA_STATE_FILE = "extra_state.safetensors"
LOSS_FILE = "loss.jsonl"
TMP_SUFFIX = ".tmp"
DELETING_SUFFIX = ".deleting"
BROKEN_SUFFIX = ".broken"


class ConfigError(ValueError):
    """A bad setting, config file, data folder or run folder; the recipe's ``main`` reports it and returns 2."""


# ----------------------------------------------------------------------------------------------- JSON / files


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``, recursively: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN/inf (``allow_nan=False``), so every file we write is valid JSON."""
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError as error:
        raise ValueError(f"refusing to write non-finite numbers as JSON ({error}); pass it through "
                         "finite_or_none first") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a unique temporary file and ``os.replace``: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------- loss log


class LossLog:
    """``loss.jsonl``: one row per step, appended by the main process and flushed per row so a kill loses at
    most the row being written; reading skips a torn last line and keeps the last row of a duplicated step."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh = None

    def rows(self) -> list[dict]:
        """Rows sorted by step, one per step (the last written wins), torn or malformed lines skipped."""
        if not self.path.is_file():
            return []
        by_step: dict[int, dict] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                by_step[int(row["step"])] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        return [by_step[s] for s in sorted(by_step)]

    def loss_at(self, step: int) -> float | None:
        """The finite loss logged for ``step``, else ``None``."""
        for row in reversed(self.rows()):
            if row["step"] == step:
                loss = row.get("loss")
                return float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else None
        return None

    def truncate(self, step: int) -> None:
        """Keep only rows of steps ``<= step`` (one per step), atomically: rows after the resumed checkpoint
        (or all rows when resuming from step 0) would otherwise be logged twice."""
        if not self.path.exists():
            return
        keep = [r for r in self.rows() if r["step"] <= step]
        write_text_atomic(self.path, "".join(dumps_strict(finite_or_none(r)) + "\n" for r in keep))

    def open(self) -> "LossLog":
        self._fh = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, step: int, loss: float, lr: float) -> None:
        """Append one row; a non-finite loss is logged as ``null`` so the file stays valid JSON lines."""
        if self._fh is None:
            raise RuntimeError("LossLog.append needs LossLog.open() first (main process only)")
        self._fh.write(dumps_strict(finite_or_none({"step": step, "loss": loss, "lr": lr})) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ----------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_step(name: str) -> int | None:
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if name.startswith(CHECKPOINT_PREFIX) and tail.isdigit() else None


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, folder)``, oldest first: ``step_N`` folders holding ``training_state.json``."""
    root = Path(out) / CHECKPOINT_DIR
    found = []
    if root.is_dir():
        for p in root.iterdir():
            step = _checkpoint_step(p.name)
            if step is not None and p.is_dir() and (p / STATE_FILE).is_file():
                found.append((step, p))
    return sorted(found)


def checkpoint_leftovers(out: Path) -> list[Path]:
    """Folders a killed save or prune left behind: ``step_N.tmp``, ``step_N.deleting`` and ``step_N`` without
    ``training_state.json`` (the state file is written before the rename, so such a folder was being pruned)."""
    root = Path(out) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    leftovers = []
    for p in root.iterdir():
        for suffix in (TMP_SUFFIX, DELETING_SUFFIX):
            if p.name.endswith(suffix) and _checkpoint_step(p.name[: -len(suffix)]) is not None:
                leftovers.append(p)
        if _checkpoint_step(p.name) is not None and not (p.is_dir() and (p / STATE_FILE).is_file()):
            leftovers.append(p)
    return sorted(leftovers)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_checkpoint_leftovers(out: Path) -> list[Path]:
    """Remove ``checkpoint_leftovers(out)`` (call on the main process only, before training starts)."""
    removed = checkpoint_leftovers(out)
    for path in removed:
        logger.info("removing %s, left by an interrupted checkpoint save or prune", path)
        _remove(path)
    return removed


def prune_checkpoints(out: Path, limit: int) -> list[Path]:
    """Keep the newest ``limit`` checkpoints. Each older one is first renamed to ``step_N.deleting`` (atomic), so a
    kill mid-delete leaves a leftover that start-up cleans rather than a half-deleted ``step_N``."""
    removed = []
    for _, old in list_checkpoints(out)[:-limit] if limit > 0 else []:
        doomed = old.with_name(old.name + DELETING_SUFFIX)
        _remove(doomed)
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(old)
    return removed


def save_checkpoint(accelerator, out: Path, step: int, state: dict, limit: int,
                    tensors: dict | None = None) -> Path:
    """``accelerator.save_state`` into ``step_N.tmp`` (all processes), then on the main process ``tensors`` (the
    recipe's own state, e.g. an EMA) as ``extra_state.safetensors``, ``training_state.json`` and the rename to
    ``step_N``, then pruning to ``limit`` checkpoints. The recipe's state goes to safetensors rather than through
    ``register_for_checkpointing``, whose pickle accelerate loads with ``weights_only=False``."""
    root = Path(out) / CHECKPOINT_DIR
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f"{CHECKPOINT_PREFIX}{step}{TMP_SUFFIX}"
    text = dumps_strict(finite_or_none(state), indent=1)  # fail before writing anything, on every process
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if tensors:
            from safetensors.torch import save_file

            save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(tmp / EXTRA_STATE_FILE))
        write_text_atomic(tmp / STATE_FILE, text)
        if final.exists():
            doomed = final.with_name(final.name + DELETING_SUFFIX)
            _remove(doomed)
            os.replace(final, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        os.replace(tmp, final)
        logger.info("wrote checkpoint %s", final)
        prune_checkpoints(out, limit)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------------------------- run state


def launch_command(command: str, num_processes: int) -> str:
    """The command that reproduces this launch: ``python -m X ...`` becomes
    ``accelerate launch --multi_gpu --num_processes N -m X ...`` when N > 1."""
    if num_processes > 1 and command.startswith("python -m "):
        return f"accelerate launch --multi_gpu --num_processes {num_processes} -m " + command[len("python -m "):]
    return command


def checkpoint_state(step: int, *, num_processes: int, batch_size: int, loss: float | None, lr: float | None,
                     wall_time_s: float, seed: int, command: str, **extra: Any) -> dict:
    """The ``training_state.json`` of a checkpoint: where the run is and what launch it needs to continue exactly
    (``batch_size`` is per process; ``global_batch_size`` = batch_size x num_processes)."""
    return finite_or_none({
        "step": step,
        "loss": loss,
        "lr": lr,
        "wall_time_s": wall_time_s,
        "seed": seed,
        "num_processes": num_processes,
        "batch_size": batch_size,
        "global_batch_size": batch_size * num_processes,
        "command": command,
        **extra,
    })


def relaunch_hint(num_processes: int, command: str | None = None) -> str:
    """How to launch ``num_processes`` processes, quoting the recorded command when there is one."""
    if command:
        how = f"`{command} --resume`" if "--resume" not in command.split() else f"`{command}`"
    elif num_processes == 1:
        how = "`python -m segdrop.training <recipe> ... --resume` (a single process)"
    else:
        how = f"`accelerate launch --multi_gpu --num_processes {num_processes} -m segdrop.training <recipe> ... --resume`"
    if num_processes > 1:
        how += " (on CPU, prefix ACCELERATE_USE_CPU=1)"
    return how


def check_process_count(state: dict, path: Path, num_processes: int) -> None:
    """Refuse to resume with another process count: the per-step batch is split by process, so a different count
    changes the global batch and the run would leave the loss curve it was on."""
    recorded = state.get("num_processes")
    if recorded is None:
        logger.warning("%s predates process-count recording; assuming it was written by 1 process", path)
        recorded = 1
    recorded = int(recorded)
    if recorded != num_processes:
        batch = state.get("batch_size")
        detail = f" (global batch {batch * recorded} = batch_size {batch} x {recorded})" if batch else ""
        raise ConfigError(
            f"checkpoint {path} was written by a run with {recorded} process(es){detail}, but this launch has "
            f"{num_processes}; resuming with a different count would change the global batch and leave the "
            f"exact-resume curve. Relaunch with {recorded} process(es): {relaunch_hint(recorded, state.get('command'))}, "
            "or start a new run in another output_dir."
        )


def check_scheduler_position(lr_scheduler, step: int, path: Path) -> None:
    """After loading ``path``: the LR schedule must sit at the optimisation step (it is a function of the step).
    A mismatch means a checkpoint of an older SegDrop whose multi-process schedule advanced once per process."""
    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)
    position = getattr(inner, "last_epoch", step)
    if position != step:
        raise ConfigError(
            f"checkpoint {path} holds an LR schedule at position {position} but training step {step} (written by an "
            "older multi-process run whose schedule advanced once per process); it cannot be resumed exactly. "
            "Start a new run in another output_dir."
        )


def make_accelerator(**kwargs: Any):
    """An ``accelerate.Accelerator`` whose prepared LR scheduler steps once per optimisation step whatever the
    process count (``step_scheduler_with_optimizer=False``); see the module docstring."""
    from accelerate import Accelerator

    if kwargs.get("step_scheduler_with_optimizer", False):
        raise ValueError("step_scheduler_with_optimizer=True would step the LR schedule once per process")
    kwargs["step_scheduler_with_optimizer"] = False
    return Accelerator(**kwargs)


def prepare_run_dir(accelerator, out: Path, resume: bool) -> None:
    """Start-of-run checks and clean-up. Every process checks (so all raise the same ``ConfigError`` instead of
    leaving the others waiting at a barrier); the main process creates ``out`` and removes checkpoint leftovers."""
    out = Path(out)
    if not resume and (list_checkpoints(out) or (out / LOSS_FILE).exists()):
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or pick a new output_dir")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        clean_checkpoint_leftovers(out)
    accelerator.wait_for_everyone()


@dataclass
class Resumed:
    """The checkpoint a run continued from."""

    step: int
    path: Path
    state: dict


def load_extra_state(resumed: Resumed) -> dict:
    """The recipe's own tensors saved with the checkpoint (``save_checkpoint(tensors=...)``); a checkpoint without
    them is a ``ConfigError`` (one written before the recipe kept them, or by another setting)."""
    from safetensors.torch import load_file

    file = resumed.path / EXTRA_STATE_FILE
    if not file.is_file():
        raise ConfigError(f"checkpoint {resumed.path} has no {EXTRA_STATE_FILE} (the EMA or other state this run "
                          "keeps): it was written without that setting or by an older SegDrop; start over without "
                          "--resume or resume with the settings it was written with")
    return load_file(str(file))


def _any_process_failed(accelerator, failed: bool) -> bool:
    if accelerator.num_processes == 1:
        return failed
    import torch

    flag = torch.tensor(float(failed), device=accelerator.device)
    return accelerator.reduce(flag, "sum").item() > 0


def _read_state(path: Path) -> dict:
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{STATE_FILE} has no integer 'step'")
    return state


def load_latest_checkpoint(accelerator, out: Path) -> Resumed | None:
    """Load the newest checkpoint that loads (``accelerator.load_state``; call after ``accelerator.prepare``).

    A checkpoint that fails to load (truncated or corrupt file, bad ``training_state.json``) is reported by name and
    the previous one is tried; those that failed are moved aside to ``step_N.broken`` once an older one loaded, so
    pruning never keeps them in place of good checkpoints. Returns ``None`` when there is no checkpoint; raises
    ``ConfigError`` naming the folders when none loads, or when the process count differs from the run's.
    """
    broken: list[tuple[Path, str]] = []
    for step, path in reversed(list_checkpoints(out)):
        error = None
        try:
            state = _read_state(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable state file means a broken checkpoint
            state, error = None, f"{STATE_FILE}: {type(exc).__name__}: {exc}"
        if state is not None:
            check_process_count(state, path, accelerator.num_processes)
            try:
                accelerator.load_state(str(path))
            except Exception as exc:  # noqa: BLE001 - safetensors, zip, pickle ... all mean "cannot load"
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                error = f"{type(exc).__name__}: {first_line[:160]}"
        if _any_process_failed(accelerator, error is not None):
            error = error or "failed to load on another process"
            then = "falling back to the previous checkpoint" if step != list_checkpoints(out)[0][0] else "no older one"
            logger.warning("checkpoint %s does not load (%s); %s", path, error, then)
            broken.append((path, error))
            continue
        if broken:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                for bad, _ in broken:
                    aside = bad.with_name(bad.name + BROKEN_SUFFIX)
                    _remove(aside)
                    os.replace(bad, aside)
                    logger.warning("moved the broken checkpoint %s aside to %s (delete it when done)", bad, aside)
            accelerator.wait_for_everyone()
        logger.info("resumed from %s at step %d", path, state["step"])
        return Resumed(int(state["step"]), path, state)
    if broken:
        listing = "; ".join(f"{p} ({e})" for p, e in broken)
        raise ConfigError(
            f"no checkpoint in {Path(out) / CHECKPOINT_DIR} could be loaded: {listing}. Restore a good copy of one of "
            "these folders, or delete them to restart the run from step 0 (or start a new output_dir)."
        )
    return None


__all__ = [
    "ConfigError", "LossLog", "Resumed", "checkpoint_leftovers", "checkpoint_state", "check_process_count",
    "check_scheduler_position", "clean_checkpoint_leftovers", "dumps_strict", "finite_or_none", "launch_command",
    "list_checkpoints", "load_extra_state", "load_latest_checkpoint", "make_accelerator", "prepare_run_dir",
    "prune_checkpoints", "relaunch_hint", "save_checkpoint", "write_text_atomic",
]


def start_or_resume(accelerator, out: Path, resume: bool, lr_scheduler,
                    config_text: str) -> tuple[int, float, LossLog, Resumed | None]:
    """Load the newest loadable checkpoint when resuming (its step and wall time), trim the loss log to that step
    (rows after it are trained again; all rows when starting over) and write ``config.toml``. Every recipe starts
    its loop here, so resume behaves the same in all of them."""
    step, wall_before = 0, 0.0
    resumed = load_latest_checkpoint(accelerator, out) if resume else None
    if resumed is not None:
        step, wall_before = resumed.step, float(resumed.state.get("wall_time_s") or 0.0)
        check_scheduler_position(lr_scheduler, step, resumed.path)
    elif resume:
        logger.info("no checkpoint in %s: starting from step 0", out)
    log = LossLog(out / LOSS_FILE)
    if accelerator.is_main_process:
        if resume:
            log.truncate(step)
        write_text_atomic(out / "config.toml", config_text)
    accelerator.wait_for_everyone()
    return step, wall_before, log, resumed


@dataclass
class StepRunner:
    """What every recipe does around its forward pass, one optimisation step at a time: the MSE loss (Min-SNR
    weighted when ``snr_gamma`` > 0), backward, clipping and the optimizer/LR step, the loss log and progress line,
    the ``max_train_minutes`` stop agreed by all processes, and checkpoints. ``settings`` is the recipe's config
    (``steps``, ``batch_size``, ``snr_gamma``, ``max_grad_norm``, ``log_every``, ``checkpointing_steps``,
    ``checkpoints_total_limit``, ``max_train_minutes``, ``seed``)."""

    accelerator: Any
    out: Path
    settings: Any
    log: LossLog
    optimizer: Any
    lr_scheduler: Any
    noise_scheduler: Any
    command: str
    started: float
    wall_before: float
    name: str = ""
    state_extra: dict | None = None
    extra_tensors: Any = None  # () -> {name: tensor}: the recipe's own state saved with every checkpoint

    def __post_init__(self) -> None:
        self.recent: list[float] = []
        self.tic = time.time()
        self.last_loss: float | None = None
        self.lr: float | None = None

    def loss(self, pred, objective, timesteps):
        """Mean MSE per sample against ``objective`` (the noise for ε-prediction, the velocity for v-prediction),
        Min-SNR-γ weighted when ``snr_gamma`` > 0 (weights for the noise scheduler's ``prediction_type``)."""
        import torch.nn.functional as F

        per_sample = F.mse_loss(pred.float(), objective.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.settings.snr_gamma > 0:
            per_sample = per_sample * min_snr_weights(self.noise_scheduler, timesteps, self.settings.snr_gamma).to(
                per_sample.device)
        return per_sample.mean()

    def update(self, loss, params) -> None:
        """Backward, clip, optimizer and LR step; remembers the rate this update used."""
        accelerator = self.accelerator
        accelerator.backward(loss)
        if self.settings.max_grad_norm > 0 and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(params, self.settings.max_grad_norm)
        self.lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = accelerator.reduce(loss.detach(), "mean").item()
        self.recent.append(self.last_loss)

    def after(self, step: int) -> bool:
        """Log, check the time budget, checkpoint; True when the run must stop early at ``step``."""
        import torch

        accelerator, c = self.accelerator, self.settings
        world = accelerator.num_processes
        if accelerator.is_main_process:
            self.log.append(step, self.last_loss, self.lr)
            if step % c.log_every == 0 or step == c.steps:
                k = min(len(self.recent), c.log_every)
                rate = (time.time() - self.tic) / max(1, len(self.recent))
                logger.info("%sstep %d/%d loss %.4f (mean of last %d: %.4f) lr %.3g %.2f s/step, ~%.1f min left",
                            f"{self.name} " if self.name else "", step, c.steps, self.last_loss, k,
                            sum(self.recent[-k:]) / k, self.lr, rate, rate * (c.steps - step) / 60)
        wall = self.wall_before + time.time() - self.started
        over_time = c.max_train_minutes > 0 and wall > c.max_train_minutes * 60
        if world > 1:  # every process must stop at the same step
            over_time = accelerator.reduce(torch.tensor(float(over_time), device=accelerator.device), "sum").item() > 0
        if step % c.checkpointing_steps == 0 or step == c.steps or over_time:
            state = checkpoint_state(step, num_processes=world, batch_size=c.batch_size, loss=self.last_loss,
                                     lr=self.lr, wall_time_s=wall, seed=c.seed, command=self.command,
                                     **(self.state_extra or {}))
            save_checkpoint(accelerator, self.out, step, state, c.checkpoints_total_limit,
                            self.extra_tensors() if self.extra_tensors is not None else None)
        if over_time and step < c.steps:
            logger.info("max_train_minutes=%.1f reached at step %d: stopping", c.max_train_minutes, step)
            return True
        return False

    def final_loss(self, step: int, resumed: Resumed | None) -> float | None:
        """The loss of the exported step: from the log (also when this launch trained no step, e.g. a resume of a
        finished run), else from the checkpoint state; None (JSON null) when neither knows it."""
        value = self.log.loss_at(step)
        if value is None and resumed is not None and resumed.step == step:
            value = finite_or_none(resumed.state.get("loss"))
        if value is None and self.last_loss is not None:
            value = finite_or_none(self.last_loss)
        return value


def min_snr_weights(noise_scheduler, timesteps, gamma: float):
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon prediction and
    min(SNR, gamma) / (SNR + 1) for v-prediction (both weigh the x0 error by min(SNR, gamma)), with SNR from
    diffusers' ``compute_snr`` so the recipes share one definition."""
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(snr, max=gamma) / snr


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def cli_main(build_parser, run, argv: list[str] | None) -> int:
    """A recipe's ``main(argv)``: parse (``--help`` and usage errors return their exit code instead of raising),
    then ``run(args, argv)``."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return run(args, argv)
