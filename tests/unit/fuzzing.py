"""What the property-based (hypothesis) fuzz tests share: how many cases, in which rounds, and settings.

``BB_FUZZ_EXAMPLES`` (default 10000) is the number of generated job scripts per run; the size
parser, the list-file parser and the configuration loader get a tenth of it each. The cases
run in rounds of at most ``ROUND``, each round a hypothesis run of its own with a fixed seed
(round 1 has seed 1, and so on). So a run is reproducible (no example database, no clock: no
deadline), a long run is one command::

    BB_FUZZ_EXAMPLES=1000000 pytest -q tests/unit -k fuzz

and its memory stays flat: hypothesis remembers every choice sequence of a run to avoid
repeats, which a single million-example run would make too big. A round that fails names its
seed; ``BB_FUZZ_FIRST_ROUND`` starts there to rerun it alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("BB_FUZZ_EXAMPLES", "10000"))
FIRST_ROUND = int(os.environ.get("BB_FUZZ_FIRST_ROUND", "1"))
ROUND = 10_000

# Long values are the point here, and a slow generator is a cost we measure, not a fault.
SETTINGS = settings(deadline=None, database=None, derandomize=False, print_blob=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


def rounds(total: int) -> Iterator[tuple[int, int]]:
    """(seed, examples) of each round of a run of ``total`` examples."""
    number = FIRST_ROUND
    for start in range(0, total, ROUND):
        yield number, min(ROUND, total - start)
        number += 1


def run_round(strategy: st.SearchStrategy[Any], check: Callable[[Any], None], number: int, examples: int) -> None:
    """Run ``check`` on ``examples`` values of ``strategy``, with the round's seed.

    A failing check is shrunk by hypothesis and re-raised with the smallest value it found.
    """
    @settings(SETTINGS, max_examples=examples)
    @seed(number)
    @given(strategy)
    def round_of_examples(value: Any) -> None:
        check(value)

    try:
        round_of_examples()
    except BaseException as error:
        error.add_note(f"fuzz round {number} (seed {number}): rerun it with BB_FUZZ_FIRST_ROUND={number}")
        raise
