"""analyses/word_use.py: one word swapped at a time, and the bundled tiny-sd reading its captions' words."""
import dataclasses

import pytest

from prunekit.shapes.data import parse_caption


@pytest.fixture
def script(analysis_script):
    return analysis_script("word_use")


@pytest.mark.parametrize("field", ["size", "color", "shape", "position", "background"])
def test_a_swap_changes_that_word_alone_to_the_next_value(script, field):
    caption = "a large pink star in the bottom right on a brown background"  # each field at its last value
    changed = parse_caption(script.swapped(caption, field))
    before = parse_caption(caption)
    values = script.VALUES[field]
    assert getattr(changed, field) == values[(values.index(getattr(before, field)) + 1) % len(values)]
    assert {k: v for k, v in dataclasses.asdict(changed).items() if k != field} == \
        {k: v for k, v in dataclasses.asdict(before).items() if k != field}


def test_tiny_sd_draws_worse_with_any_word_wrong(script):
    table = script.word_use("tiny-sd", examples=32, levels=1, seed=0)
    assert list(table.columns) == ["level", "error", *script.VALUES] and len(table) == 1
    row = table.iloc[0]
    assert 0 < row["error"] < 0.1  # the bundled model predicts its training noise closely at t = 500
    assert row["background"] > 1.5 and row["shape"] > 1.1 and row["color"] > 1.1
