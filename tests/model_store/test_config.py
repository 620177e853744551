"""Training settings: the conditional section, ``--set`` overrides typed as their defaults
(booleans read as words), and the combine rule validated."""
from __future__ import annotations

import pytest

from model_store.config import COMBINE_RULES, ConditionalConfig, TrainingConfig


def test_the_conditional_section_is_part_of_the_training_config_and_round_trips() -> None:
    config = TrainingConfig()
    assert isinstance(config.conditional, ConditionalConfig) and config.conditional.combine == "conditional"
    changed = config.with_overrides({"conditional.min_alpha": "0.01", "conditional.combine": "max"})
    assert changed.conditional.min_alpha == 0.01 and isinstance(changed.conditional.min_alpha, float)
    assert TrainingConfig.from_dict(changed.to_dict()) == changed
    assert TrainingConfig.from_dict({}) == config  # a store written before the section existed


@pytest.mark.parametrize("word, value", [
    ("true", True), ("True", True), ("yes", True), ("on", True), ("1", True),
    ("false", False), ("FALSE", False), ("no", False), ("off", False), ("0", False), (" false ", False),
])
def test_booleans_are_read_as_words(word, value) -> None:
    # bool("false") is True: a boolean override must not be converted with its type
    config = TrainingConfig().with_overrides({"conditional.quadratic": word, "conditional.log_positive": word})
    assert config.conditional.quadratic is value and config.conditional.log_positive is value


def test_a_boolean_that_is_not_a_word_for_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"conditional.quadratic takes true or false, got 'maybe'"):
        TrainingConfig().with_overrides({"conditional.quadratic": "maybe"})


def test_combine_and_residual_evidence_are_validated() -> None:
    assert COMBINE_RULES == ("conditional", "max", "groups")
    for rule in COMBINE_RULES:
        assert TrainingConfig().with_overrides({"conditional.combine": rule}).conditional.combine == rule
    with pytest.raises(ValueError, match=r"conditional.combine must be one of conditional, max, groups, got 'both'"):
        TrainingConfig().with_overrides({"conditional.combine": "both"})
    with pytest.raises(ValueError, match=r"conditional.residual_evidence must be tails, squares or both"):
        ConditionalConfig(residual_evidence="cubes")


def test_an_unknown_conditional_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown setting 'conditional.nope'"):
        TrainingConfig().with_overrides({"conditional.nope": "1"})


def test_the_lasting_excursion_ratio_is_at_least_one_tolerance() -> None:
    assert ConditionalConfig(lasting_excursion_ratio=1.0).lasting_excursion_ratio == 1.0  # the boundary is allowed
    assert ConditionalConfig(lasting_excursion_ratio=float("inf")).lasting_excursion_ratio == float("inf")
    for bad in (0.999, 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"conditional.lasting_excursion_ratio must be >= 1"):
            ConditionalConfig(lasting_excursion_ratio=bad)
    assert TrainingConfig().with_overrides({"conditional.lasting_excursion_ratio": "3"}).conditional.lasting_excursion_ratio == 3.0
    assert TrainingConfig().with_overrides({"conditional.group_excursions": "false"}).conditional.group_excursions is False


def test_an_override_of_the_wrong_type_names_the_setting_and_what_it_takes() -> None:
    with pytest.raises(ValueError, match=r"grouping.min_group_rows takes a whole number \(default \d+\), got 'abc'"):
        TrainingConfig().with_overrides({"grouping.min_group_rows": "abc"})
    with pytest.raises(ValueError, match=r"conditional.ridge takes a number \(default 1.0\), got 'x'"):
        TrainingConfig().with_overrides({"conditional.ridge": "x"})
    with pytest.raises(ValueError, match=r"workers takes a whole number \(default 0\), got 'many'"):
        TrainingConfig().with_overrides({"workers": "many"})
