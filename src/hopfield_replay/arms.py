"""The names of the replay arms: the strategy names and the grammar of ``<column>_high`` / ``_low`` /
``_high_per_class`` / ``_low_per_class`` arm names.

A leaf module (it imports nothing of the project): the params check (``io.config``) reads arm names here, so the
selectors (``replay.py``) are no code dependency of the stages that never select a buffer. ``replay.py`` registers
one selector under each name of ``STRATEGY_NAMES`` (tests/test_replay.py checks that the two agree); a new
strategy is a selector registered there plus its name here.
"""

from __future__ import annotations

import re

# Every registered strategy, in the order of replay.py (the order error messages list them in).
STRATEGY_NAMES = ("energy_high", "energy_low", "random", "high", "low", "class_balanced", "kcenter", "herding", "soft",
                  "oracle", "high_per_class", "low_per_class", "energy_high_per_class", "oracle_per_class")
# The strategies that rank by the measured forgetting without replay (the score column "oracle"): ceilings.
ORACLE_STRATEGIES = ("oracle", "oracle_per_class")
PER_CLASS = "_per_class"  # the name ending of every class-stratified arm; its reference is class_balanced
ARM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # what a params file may name an arm
# <column><suffix> -> the strategy that ranks by that column (longest suffix first).
SUFFIXES = (("_high_per_class", "high_per_class"), ("_low_per_class", "low_per_class"), ("_high", "high"),
            ("_low", "low"))


def parse_arm(arm: str, score: str) -> tuple[str, str]:
    """An arm as ``(strategy, score column)``: a registered strategy ranks by ``score`` (the oracle by the column
    ``"oracle"``, the measured forgetting); ``<column>_high`` / ``<column>_low`` is high / low on that column, and
    ``<column>_high_per_class`` / ``<column>_low_per_class`` the same inside each class."""
    if arm in STRATEGY_NAMES:
        return arm, "oracle" if arm in ORACLE_STRATEGIES else score
    for suffix, strategy in SUFFIXES:
        if arm.endswith(suffix) and len(arm) > len(suffix):
            return strategy, arm[: -len(suffix)]
    raise ValueError(f"unknown arm {arm!r}; use one of {', '.join(STRATEGY_NAMES)} or <score column>_high / _low / "
                     "_high_per_class / _low_per_class")


def is_arm_name(arm: str) -> bool:
    """Whether a params file may name this arm: lower-case snake case, and a strategy or a ``<column>_<suffix>``."""
    try:
        return bool(ARM_NAME.match(arm)) and bool(parse_arm(arm, ""))
    except ValueError:
        return False
