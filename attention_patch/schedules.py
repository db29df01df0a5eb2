"""Which timesteps a capture visits, and whether the latent is noised, per paper.

* Concept distillation (Dombrowski et al., code MischaD/fobadiffusion): a 50-step DDIM grid over 1000 DDPM steps
  gives t = 1, 21, ..., 981; the first ``T0`` (default 40) from the low-noise end are used, t = 1 ... 781. The clean
  latent is noised afresh at each t, one conditional pass each, no CFG.
* DiffSeg (Tian et al., code google/diffseg): one pass at t = 300 on the clean latent (no noise), empty prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

CONCEPT_DISTILLATION = "concept distillation"
DIFFSEG = "DiffSeg"
CUSTOM = "custom"
PRESETS = (CONCEPT_DISTILLATION, DIFFSEG, CUSTOM)

DDIM_STEPS = 50
TRAIN_TIMESTEPS = 1000
DEFAULT_T0 = 40
DIFFSEG_TIMESTEP = 300


@dataclass(frozen=True)
class Schedule:
    timesteps: tuple[int, ...]
    add_noise: bool
    keep_self: bool
    keep_cross: bool


def ddim_grid(steps: int = DDIM_STEPS, train_timesteps: int = TRAIN_TIMESTEPS) -> list[int]:
    """DDIM's "uniform" timesteps, ascending: 1, 21, ..., 981 for 50 steps (CompVis ``make_ddim_timesteps``)."""
    stride = train_timesteps // steps
    return [i * stride + 1 for i in range(steps)]


def concept_distillation_timesteps(t0: int = DEFAULT_T0) -> list[int]:
    grid = ddim_grid()
    if not 1 <= t0 <= len(grid):
        raise ValueError(
            f"T0 = {t0} is outside the {len(grid)}-step DDIM grid: choose T0 between 1 and {len(grid)} "
            f"(the paper uses {DEFAULT_T0})."
        )
    return grid[:t0]


def parse_timesteps(text: str, train_timesteps: int = TRAIN_TIMESTEPS) -> list[int]:
    """Parse "300" or "1, 21, 41" into DDPM timesteps, with a clear error for anything else."""
    try:
        values = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"Timesteps must be comma-separated integers such as '300' or '1, 21, 41'; got {text!r}.") from error
    if not values:
        raise ValueError("No timesteps given: type at least one, e.g. '300'.")
    bad = [t for t in values if not 0 <= t < train_timesteps]
    if bad:
        raise ValueError(f"Timesteps {bad} are outside 0..{train_timesteps - 1}.")
    return values


def schedule_for(preset: str, t0: int = DEFAULT_T0, timesteps: str = "300", add_noise: bool = False) -> Schedule:
    if preset == CONCEPT_DISTILLATION:
        return Schedule(tuple(concept_distillation_timesteps(t0)), add_noise=True, keep_self=False, keep_cross=True)
    if preset == DIFFSEG:
        return Schedule((DIFFSEG_TIMESTEP,), add_noise=False, keep_self=True, keep_cross=True)
    if preset == CUSTOM:
        return Schedule(tuple(parse_timesteps(timesteps)), add_noise=add_noise, keep_self=True, keep_cross=True)
    raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
