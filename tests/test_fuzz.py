"""Property-based tests: the table and neighbour parsers fail only with the project's own errors (and
return consistent arrays when they accept), and the pure losses stay finite on finite inputs."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.errors import DataError

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
C = 7

# --- annotation tables -------------------------------------------------------------------------------------
weird_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "3", " 2 ", "2.0", "2.5", "-1", "0x3", "happy",
                     "1;2", "[1, 2]", "1,2,3,4", "1e38;1e39", "NaN;1"]),
)
plausible = {
    "path": st.sampled_from([f"img/{i}.png" for i in range(8)]),
    "expression": st.integers(0, C - 1),
    "valence": st.floats(-1, 1),
    "arousal": st.floats(-1, 1),
    "landmarks": st.sampled_from(["1;2;3;4", "5.5;6.5;7;8", "-1 2 3e2 4", "1;2"]),
    "votes": st.sampled_from(["1;0;0;0;0;0;9", "0;0;0;0;0;0;0", "1;1;1;1;1;1;1", "1,2,0,0,0,0,0"]),
    "clean_expression": st.integers(0, C - 1),
    "extra": weird_scalar,
}


@st.composite
def frames(draw):
    columns = draw(st.lists(st.sampled_from(sorted(plausible)), unique=True, min_size=0, max_size=len(plausible)))
    # Mostly keep the required columns so the row-level checks get exercised.
    for required in ("path", "expression"):
        if required not in columns and draw(st.integers(0, 4)):
            columns.append(required)
    n = draw(st.integers(0, 6))
    weirdness = draw(st.sampled_from([0.0, 0.05, 0.2, 0.6]))  # share of weird cells in this table

    def cell(column):
        if draw(st.floats(0, 1)) < weirdness or column == "extra":
            return draw(weird_scalar)
        return draw(plausible[column])

    data = {c: [cell(c) for _ in range(n)] for c in columns}
    return pd.DataFrame(data, columns=columns, dtype=object)


def _check_table(table, n_rows):
    assert len(table) == n_rows and table.labels.shape == (n_rows,)
    assert table.labels.dtype == np.int32 and ((table.labels >= 0) & (table.labels < C)).all()
    assert table.frame["path"].map(lambda p: isinstance(p, str) and p.strip() != "").all()
    assert not table.frame["path"].duplicated().any()
    for array in (table.va, table.landmarks, table.votes):
        if array is not None:
            assert len(array) == n_rows and array.dtype == np.float32 and np.isfinite(array).all()
    if table.va is not None:
        assert (np.abs(table.va) <= 1.0 + 1e-6).all()
    if table.votes is not None:
        assert table.votes.shape == (n_rows, C) and (table.votes >= 0).all()


@SETTINGS
@given(frames())
def test_validate_frame_raises_only_data_errors(frame):
    from data.schema import validate_frame

    try:
        table = validate_frame(frame, "fuzz.csv", C)
    except DataError as exc:
        assert str(exc).startswith("fuzz.csv")
        return
    _check_table(table, len(frame))


@SETTINGS
@given(frames())
def test_validate_frame_skipping_drops_exactly_the_bad_rows(frame):
    """--skip-bad mode: every bad row is reported once by row; the rest form a valid table; only
    table-level problems (columns, emptiness) raise."""
    from data.schema import validate_frame

    bad_rows = []
    try:
        table = validate_frame(frame, "fuzz.csv", C, bad_rows=bad_rows)
    except DataError as exc:
        message = str(exc)
        assert "no usable rows" in message or not re.search(r", row \d+:", message), message
        return
    rows = [row for row, _ in bad_rows]
    assert len(rows) == len(set(rows)) and all(0 <= r < len(frame) for r in rows)
    assert all(re.match(rf"fuzz\.csv, row {r + 1}: ", m) for r, m in bad_rows)
    _check_table(table, len(frame) - len(rows))
    assert table.frame.attrs["kept_rows"] == [r for r in range(len(frame)) if r not in rows]


@SETTINGS
@given(st.binary(max_size=300))
def test_read_csv_arbitrary_bytes(tmp_path_factory, data):
    from data.schema import read_csv, validate_frame

    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_bytes(data)
    try:
        frame = read_csv(path)
        table = validate_frame(frame, path, C)
    except DataError as exc:  # a user error naming the file; any other exception fails the test
        assert path.name in str(exc)
    else:
        assert len(table) <= len(frame)


@SETTINGS
@given(weird_scalar)
def test_parse_float_list_any_cell(cell):
    from data.schema import parse_float_list

    try:
        values = parse_float_list(cell, "t.csv", 1, "landmarks")
    except DataError as exc:
        assert "t.csv, row 1" in str(exc)
        return
    assert values.dtype == np.float64 and np.isfinite(values.astype(np.float32)).all()


# --- neighbour tables ------------------------------------------------------------------------------------
index_arrays = st.one_of(
    hnp.arrays(st.sampled_from([np.int64, np.int32, np.int8]), hnp.array_shapes(min_dims=0, max_dims=3, max_side=7),
               elements=st.integers(-3, 9)),
    hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, max_side=7), elements=st.integers(0, 9)),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=7)),
    hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, max_side=5)),
    hnp.arrays(np.dtype("U3"), hnp.array_shapes(min_dims=2, max_dims=2, max_side=4)),
)


def _check_neighbors(indices, num_rows, k):
    assert indices.dtype == np.int32 and indices.shape == (num_rows, k)
    assert ((indices >= 0) & (indices < num_rows)).all()
    assert not (indices == np.arange(num_rows)[:, None]).any()


@SETTINGS
@given(index_arrays, st.integers(0, 8), st.integers(-1, 6))
def test_validate_neighbor_indices_arbitrary_arrays(indices, num_rows, k):
    from data.neighbors import validate_neighbor_indices

    try:
        result = validate_neighbor_indices(indices, num_rows, k, "t.neighbors.npz")
    except DataError as exc:
        assert str(exc).startswith("t.neighbors.npz")
        return
    _check_neighbors(result, num_rows, k)
    np.testing.assert_array_equal(result, np.asarray(indices)[:, :k])


@SETTINGS
@given(st.lists(st.one_of(weird_scalar, st.lists(st.integers(-(10**20), 10**20), max_size=6).map(
    lambda v: ";".join(map(str, v)))), min_size=0, max_size=7), st.integers(0, 6))
def test_parse_knn_column_arbitrary_text(values, k):
    from data.neighbors import parse_knn_column

    try:
        result = parse_knn_column(values, len(values), k, "train.csv")
    except DataError as exc:
        assert str(exc).startswith("train.csv")
        return
    _check_neighbors(result, len(values), k)


@SETTINGS
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, (n, 2), elements=st.floats(-1, 1)), st.integers(1, n - 1))))
def test_built_neighbor_tables_validate(args):
    """Whatever VA points (duplicates included), the built table passes its own validation."""
    from data.neighbors import build_neighbor_table, validate_neighbor_indices

    va, k = args
    indices, distances = build_neighbor_table(va, k)
    _check_neighbors(validate_neighbor_indices(indices, len(va), k, "built"), len(va), k)
    assert np.isfinite(distances).all() and (np.diff(distances, axis=1) >= -1e-9).all()


# --- losses stay finite on finite inputs -----------------------------------------------------------------
B, K, D = 3, 2, 4


def bounded(shape, lo=-50.0, hi=50.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


labels_st = hnp.arrays(np.int32, (B,), elements=st.integers(0, C - 1))


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _all_finite(*values):
    for v in values:
        assert np.isfinite(np.asarray(v)).all(), v
    return True


@SETTINGS
@given(bounded((B, C)), bounded((B, K, C)), bounded((B, K), 0.0, 1e3), bounded((B,), 0.0, 1.0), labels_st,
       bounded((B, D), -1e3, 1e3), bounded((C, D), -1e3, 1e3))
def test_ldlva_losses_finite(logits, nb_logits, contributions, lam, labels, features, centers):
    import tensorflow as tf

    from losses import ldlva

    probs = tf.Variable(_softmax(logits))
    lam_var = tf.Variable(lam)
    with tf.GradientTape() as tape:
        target = ldlva.target_distribution(labels, _softmax(nb_logits), contributions, lam_var, C)
        loss = ldlva.soft_cross_entropy(target, probs)
    _all_finite(target, loss, *tape.gradient(loss, [probs, lam_var]))
    np.testing.assert_allclose(target.numpy().sum(-1), 1.0, rtol=1e-4)
    _all_finite(ldlva.discriminative_loss(features, labels, centers, lam),
                ldlva.release_center_loss(features, labels, centers, 1.0 - lam),
                ldlva.release_center_repulsion(ldlva.release_center_attraction(features, labels, centers, lam)))


@SETTINGS
@given(bounded((B, C), -100, 100), bounded((B, C), -100, 100), labels_st, st.floats(0.0, 1.0))
def test_nla_losses_finite(logits, flipped, labels, schedule):
    import tensorflow as tf

    from losses import nla

    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = nla.nla_total_loss(z, flipped, labels, schedule)
    assert _all_finite(loss, tape.gradient(loss, z), nla.jsd_consistency(logits, flipped, "textbook"))


@SETTINGS
@given(bounded((B, 2), -1, 1), bounded((B, 2), -1, 1), bounded((B, C)), labels_st, bounded((C, 2), -1, 1),
       st.floats(0.0, 1.0), bounded((C,), 0.0, 100.0))
def test_ddaf_losses_finite(pred_va, va, logits, labels, means, alpha, class_weights):
    import tensorflow as tf

    from losses import ddaf

    mixed = ddaf.euclidean_mixed_labels(tf.constant(va), tf.constant(means))
    targets = ddaf.fuse_labels(tf.constant(labels), mixed, alpha)
    probs = tf.Variable(_softmax(logits))
    with tf.GradientTape() as tape:
        total = tf.add_n(list(ddaf.ddaf_losses(pred_va, va, probs, targets, labels, class_weights).values()))
    assert _all_finite(mixed, targets, total, tape.gradient(total, probs))


@SETTINGS
@given(bounded((B, B), 0.0, 1e3), bounded((B, C)), bounded((B, D), -10, 10), bounded((B, D), -10, 10), labels_st,
       bounded((B, 2, 2), -100, 200), bounded((1, 6, 6, 2), -2, 2))
def test_lanet_losses_finite(weights, logits, queries, keys, labels, landmarks, pred):
    import tensorflow as tf

    from losses import lanet

    contributions = lanet.normalize_contributions(weights)
    target = tf.matmul(contributions, _softmax(logits))
    q = tf.math.l2_normalize(queries, axis=-1)
    k = tf.math.l2_normalize(keys, axis=-1)
    heat, heat_weights = lanet.gaussian_heatmaps(landmarks[:1], 6, 4.0)
    assert _all_finite(contributions, target, lanet.kl_divergence_batchmean(target, logits, from_logits=True),
                lanet.kl_divergence_batchmean(target, _softmax(logits)),
                lanet.el_contrastive_loss(q, k, k, labels, labels[::-1]),
                lanet.adaptive_wing_loss(pred, heat, heat_weights), lanet.knn_adjacency(queries, 2))
