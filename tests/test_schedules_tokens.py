"""Timestep presets from the papers and word-to-column mapping."""

import pytest

from segdrop.attention_patch import schedules
from segdrop.attention_patch.tokens import find_word_positions, word_spans

SD_TOKENS = ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "circle</w>"] + ["<|endoftext|>"] * 9


def test_concept_distillation_grid_is_the_low_noise_end_of_ddim50():
    steps = schedules.concept_distillation_timesteps(40)
    assert steps[:3] == [1, 21, 41] and steps[-1] == 781 and len(steps) == 40
    assert schedules.ddim_grid()[-1] == 981


def test_presets():
    cd = schedules.schedule_for(schedules.CONCEPT_DISTILLATION)
    assert cd.add_noise and cd.keep_cross and not cd.keep_self and len(cd.timesteps) == 40
    ds = schedules.schedule_for(schedules.DIFFSEG)
    assert ds.timesteps == (300,) and not ds.add_noise and ds.keep_self
    custom = schedules.schedule_for(schedules.CUSTOM, timesteps="1, 500", add_noise=True)
    assert custom.timesteps == (1, 500) and custom.add_noise


def test_t0_beyond_grid_names_the_fix():
    with pytest.raises(ValueError, match="between 1 and 50"):
        schedules.concept_distillation_timesteps(51)


@pytest.mark.parametrize("text", ["", "abc", "1000", "-1"])
def test_bad_custom_timesteps(text):
    with pytest.raises(ValueError):
        schedules.parse_timesteps(text)


def test_word_columns_count_the_start_token():
    assert find_word_positions(SD_TOKENS, "circle") == [6]
    assert find_word_positions(SD_TOKENS, "red, circle") == [5, 6]
    assert find_word_positions(SD_TOKENS, "a") == [1, 4]


def test_multi_token_word_gives_all_its_columns():
    tokens = ["<|startoftext|>", "a</w>", "blu", "e", "square</w>", "<|endoftext|>"]
    assert word_spans(tokens) == [("a", [1]), ("bluesquare", [2, 3, 4])]


def test_word_not_in_prompt_lists_the_words():
    with pytest.raises(ValueError, match=r"'bird' is not in the prompt.*'photo'.*'circle'"):
        find_word_positions(SD_TOKENS, "bird")
