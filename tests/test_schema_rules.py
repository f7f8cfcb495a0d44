"""data/schema.py's row rules fire identically fail-fast and collecting (``--skip-bad``).

Every rule in ``ROW_RULES`` has a case here that breaks it (and only it) in two rows of an otherwise valid
table; a new rule without a case fails ``test_every_rule_has_a_case``. For each case the fail-fast error is
exactly the message the collecting mode records for the first broken row, and the collecting mode drops
exactly the broken rows. Mixed cases check the same for tables that break several rules at once.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from common.errors import DataError
from data.schema import ROW_RULES, validate_frame

C = 7
CSV = "rules.csv"


def _valid_frame() -> pd.DataFrame:
    n = 6
    return pd.DataFrame({
        "path": [f"img/{i}.png" for i in range(n)],
        "expression": [i % C for i in range(n)],
        "valence": [0.1 * i for i in range(n)],
        "arousal": [-0.1 * i for i in range(n)],
        "landmarks": ["1;2;3;4"] * n,
        "votes": [";".join("3" if c == i % C else "1" for c in range(C)) for i in range(n)],
        "clean_expression": [(i + 1) % C for i in range(n)],
    }, dtype=object)


# rule name -> ({row: {column: bad cell}}, fragment of the message for those rows)
CASES = {
    "path": ({1: {"path": ""}, 4: {"path": "/abs.png"}}, "path"),
    "unique_path": ({2: {"path": "img/0.png"}, 4: {"path": "img/./0.png"}}, "duplicated path"),
    "expression": ({1: {"expression": "happy"}, 3: {"expression": 9}}, "'expression'"),
    "va_finite": ({2: {"valence": "nan"}, 5: {"arousal": "abc"}}, "NaN, infinite or not a number"),
    "va_range": ({1: {"valence": 1.5}, 3: {"arousal": -2}}, "outside [-1, 1]"),
    "landmarks_numbers": ({0: {"landmarks": "1;x;3;4"}, 4: {"landmarks": None}}, "'landmarks'"),
    "landmarks_count": ({1: {"landmarks": "1;2;3"}, 2: {"landmarks": "1;2;3;4;5;6"}}, "landmarks have"),
    "votes_numbers": ({3: {"votes": "a;b"}, 5: {"votes": "inf;1;1;1;1;1;1"}}, "'votes'"),
    "votes_counts": ({0: {"votes": "1;2"}, 2: {"votes": "0;0;0;0;0;0;0"}}, "votes"),
    "clean_expression": ({4: {"clean_expression": -1}, 5: {"clean_expression": 2.5}}, "'clean_expression'"),
}


def _broken(*names: str) -> pd.DataFrame:
    frame = _valid_frame()
    for name in names:
        for row, cells in CASES[name][0].items():
            for column, value in cells.items():
                frame.at[row, column] = value
    return frame


def _both_modes(frame: pd.DataFrame, **kwargs):
    """(fail-fast message or None, collected {row: message}, table kept by the collecting mode or None)."""
    try:
        validate_frame(frame, CSV, C, **kwargs)
        strict = None
    except DataError as exc:
        strict = str(exc)
    bad: list = []
    try:
        kept = validate_frame(frame, CSV, C, bad_rows=bad, **kwargs)
    except DataError as exc:
        assert "no usable rows" in str(exc), exc
        kept = None
    return strict, dict(bad), kept


def test_every_rule_has_a_case():
    names = [rule.name for rule in ROW_RULES]
    assert len(names) == len(set(names))
    assert set(names) == set(CASES)


def test_the_valid_frame_passes_both_modes():
    strict, collected, kept = _both_modes(_valid_frame())
    assert strict is None and collected == {}
    assert len(kept) == 6 and kept.frame.attrs["kept_rows"] == list(range(6))
    assert kept.landmarks.shape == (6, 2, 2) and kept.votes.shape == (6, C) and kept.va.dtype == np.float32


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_rule_fires_identically_in_both_modes(name):
    rows, fragment = CASES[name]
    strict, collected, kept = _both_modes(_broken(name))
    assert sorted(collected) == sorted(rows), collected
    first = min(rows)
    assert strict == collected[first], (strict, collected[first])
    for row, message in collected.items():
        assert message.startswith(f"{CSV}, row {row + 1}: ") and fragment in message, message
    assert kept is not None and len(kept) == 6 - len(rows)
    assert kept.frame.attrs["kept_rows"] == [r for r in range(6) if r not in rows]
    # The kept rows are the valid table's rows, values and all.
    whole = validate_frame(_valid_frame(), CSV, C)
    keep = kept.frame.attrs["kept_rows"]
    assert kept.paths == [whole.paths[r] for r in keep]
    np.testing.assert_array_equal(kept.labels, whole.labels[keep])
    np.testing.assert_array_equal(kept.votes, whole.votes[keep])
    np.testing.assert_array_equal(kept.landmarks, whole.landmarks[keep])


@pytest.mark.parametrize("pair", list(itertools.combinations(sorted(CASES), 2)))
def test_mixed_rules_fail_fast_names_a_collected_message(pair):
    """With several rules broken, fail-fast raises the first rule's first row, with the message the
    collecting mode records for that row; the collecting mode drops every broken row."""
    strict, collected, _ = _both_modes(_broken(*pair))
    broken_rows = set(CASES[pair[0]][0]) | set(CASES[pair[1]][0])
    assert set(collected) <= broken_rows  # two cases may write the same cell: the later one wins
    assert strict is not None and strict in collected.values(), (strict, collected)
    order = [rule.name for rule in ROW_RULES]
    first_rule = min(pair, key=order.index)
    first_row = min(CASES[first_rule][0])
    if first_row in collected:  # not overwritten by the other case's cell in the same row
        assert strict == collected[first_row]


def test_landmark_count_given_by_the_caller():
    frame = _valid_frame()
    strict, collected, _ = _both_modes(frame, num_landmarks=3)
    assert strict == collected[0] == f"{CSV}, row 1: landmarks have 4 values; expected 6 (x,y pairs)"
    assert sorted(collected) == list(range(6))


def test_table_level_problems_raise_in_both_modes():
    frame = _broken("expression").drop(columns=["arousal"])
    for bad_rows in (None, []):
        with pytest.raises(DataError, match="has a 'valence' column but no 'arousal'"):
            validate_frame(frame, CSV, C, bad_rows=bad_rows)
    frame = _valid_frame().drop(columns=["valence", "arousal"])
    for bad_rows in (None, []):
        with pytest.raises(DataError, match="needs 'valence' and 'arousal'"):
            validate_frame(frame, CSV, C, require_va=True, bad_rows=bad_rows)
