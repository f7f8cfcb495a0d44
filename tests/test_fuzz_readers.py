"""Fuzzing every file reader (issue 33): a bounded budget of ``benchmarks.fuzz`` runs in the suite, and each bug
the long campaign found has a regression test named after the case.

The long run is ``python -m benchmarks.fuzz --inputs 10000`` (its table is in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import pickle
import struct
import time
import tracemalloc

import numpy as np
import pytest

from benchmarks import fuzz
from common.errors import CheckpointError, ConfigError, DataError, FERError

SEED = 33  # fixed: the suite replays the same inputs every time (the long campaign uses other seeds)
SMALL = 8 << 20  # what a refused hostile file may make a reader allocate here (the bombs claim 64 MiB or more)


def _assert_no_findings(report, inputs, reach_errors=True):
    for name, row in report["readers"].items():
        assert row["inputs"] == inputs, (name, row)
        assert row["crash"] == row["hang"] == row["over_cap"] == 0, [f for f in report["findings"] if f["reader"] == name]
        assert row["clean"] > 0 or not reach_errors, (name, row)  # the mutations reach the error paths
        assert row["clean"] + row["load"] == inputs


@pytest.mark.slow
def test_fuzz_readers_without_tensorflow_in_a_limited_worker(tmp_path):
    """The campaign itself (worker process, per-input time limit, address-space limit, memory cap) on every reader
    that does not need TensorFlow."""
    names = [n for n in fuzz.available_readers() if not fuzz.READERS[n].needs_tensorflow]
    report = fuzz.run_campaign([n for n in names if n != "dlib-dat"], 25, seed=SEED, out=tmp_path / "a",
                               log=lambda *a: None)
    _assert_no_findings(report, 25)
    assert json.loads((tmp_path / "a" / "fuzz.json").read_text())["readers"].keys() == report["readers"].keys()
    if "dlib-dat" in names:  # the real 22 MB file per input: fewer
        _assert_no_findings(fuzz.run_campaign(["dlib-dat"], 8, seed=SEED, out=tmp_path / "b", log=lambda *a: None), 8)


@pytest.mark.slow
def test_fuzz_tensorflow_readers_in_process(tmp_path):
    """config.json, fer_export.json and checkpoints (their worker would mostly import TensorFlow)."""
    report = fuzz.run_in_process(["config-json", "export-json"], 12, seed=SEED, workdir=tmp_path)
    _assert_no_findings(report, 12)
    report = fuzz.run_in_process(["checkpoint"], 5, seed=SEED, workdir=tmp_path)  # a Keras load per input
    _assert_no_findings(report, 5, reach_errors=False)  # (most damage falls back to the older checkpoint: a load)


def test_campaign_reports_a_crash_a_hang_and_an_allocation_over_the_cap(tmp_path, monkeypatch):
    """The harness can fail: a reader that raises a foreign exception, loops, or allocates past the cap is caught."""
    reader = fuzz.READERS["dataset-json"](tmp_path / "r")
    reader.prepare()
    assert fuzz.classify(reader, lambda: {}.__getitem__("x"))["kind"] == "crash"
    assert fuzz.classify(reader, lambda: (_ for _ in ()).throw(DataError("no file named")))["kind"] == "crash"
    assert fuzz.classify(reader, lambda: (_ for _ in ()).throw(DataError(f"{reader.live}: bad")))["kind"] == "clean"
    def allocate_then_refuse():
        np.ones(fuzz.MEMORY_CAP_BYTES // 8 + 4096, np.float64)
        raise DataError(f"{reader.live}: bad")

    tracemalloc.start()
    try:
        big = fuzz.classify(reader, allocate_then_refuse)
    finally:
        tracemalloc.stop()
    assert big["kind"] == "over_cap" and big["peak_bytes"] > fuzz.MEMORY_CAP_BYTES
    calls = []
    monkeypatch.setattr(fuzz.DatasetJson, "read", lambda self: calls.append(1) or (len(calls) > 1 and time.sleep(30)))
    report = fuzz.run_in_process(["dataset-json"], 1, seed=SEED, workdir=tmp_path / "h", timeout=0.5)
    assert report["readers"]["dataset-json"]["hang"] == 1  # (the first call is the warm-up read, untimed)


def _peak(fn):
    """(what fn raised, the peak of tracemalloc-visible allocations while it ran)."""
    tracemalloc.start()
    try:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - returned for the caller to judge
            return exc, tracemalloc.get_traced_memory()[1]
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- .pth ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_format():
    return fuzz.suite_torch_writer()


def test_pth_zip_bomb_storage_record_is_refused_before_inflating(torch_format, tmp_path):
    """A 64 KiB file whose storage record inflates to 64 MiB (the pickle agreeing on its size) loaded all of it."""
    n = (64 << 20) // 4
    storage = torch_format.Storage(np.zeros(1, np.float32))
    storage.data = np.broadcast_to(np.float32(0), (n,))
    pickled, _ = torch_format.pickle_bytes({"w": torch_format.Strided(storage, 0, (n,), (1,))})
    path = tmp_path / "bomb.pth"
    path.write_bytes(fuzz.merge_zip(fuzz.build_zip([("archive/data.pkl", pickled), ("archive/byteorder", b"little")]), {},
                                    extra_zip=fuzz.deflated_zeros_member("archive/data/0", b"", n * 4)))
    assert path.stat().st_size < 1 << 20
    from models.torch_checkpoint import load_state_dict

    error, peak = _peak(lambda: load_state_dict(path))
    assert isinstance(error, DataError) and "inflates" in str(error) and str(path) in str(error)
    assert peak < SMALL


def test_pth_tuple_dag_pickle_does_not_expand(torch_format, tmp_path):
    """t(i+1) = (t(i), t(i)) 64 levels deep: 2^64 leaves through memo references; the reader walked them all."""
    path = tmp_path / "dag.pth"
    torch_format.write_zip(path, {"w": np.zeros(3, np.float32)})
    members = fuzz.zip_members(path.read_bytes())
    path.write_bytes(fuzz.build_zip([(n, fuzz._tuple_dag_pickle(64) if n.endswith("data.pkl") else p) for n, p in members]))
    from models.torch_checkpoint import read_checkpoint

    start = time.perf_counter()
    obj = read_checkpoint(path)
    assert time.perf_counter() - start < 5 and isinstance(obj, tuple)


def test_pth_legacy_length_field_of_gigabytes_does_not_allocate_it(torch_format, tmp_path):
    """A legacy file's pickled string claiming 1.5 GB: the pickle scan read (and allocated) that much from the file
    before finding 2 KB left."""
    path = tmp_path / "legacy.pth"
    torch_format.write_legacy(path, {"w": np.zeros(3, np.float32)})
    data = path.read_bytes()
    magic_end = len(pickle.dumps(torch_format.LEGACY_MAGIC, protocol=2))
    hostile = b"\x80\x02X" + struct.pack("<I", 1_500_000_000) + b"abc."  # BINUNICODE of 1.5 GB, 3 bytes present
    path.write_bytes(data[:magic_end] + hostile + data[magic_end:])
    from models.torch_checkpoint import load_state_dict

    error, peak = _peak(lambda: load_state_dict(path))
    assert isinstance(error, DataError) and str(path) in str(error)
    assert peak < SMALL


def test_pth_stride_zero_view_repeating_its_storage_is_refused(torch_format, tmp_path):
    """A one-element storage viewed as 10^5 × 10^5 with stride 0: materialising it needs 80 GB of indices."""
    path = tmp_path / "view.pth"
    view = torch_format.Strided(torch_format.Storage(np.zeros(1, np.float32)), 0, (100_000, 100_000), (0, 0))
    torch_format.write_zip(path, {"w": view})
    from models.torch_checkpoint import load_state_dict

    error, peak = _peak(lambda: load_state_dict(path))
    assert isinstance(error, DataError) and "repeats its storage" in str(error)
    assert peak < SMALL


# --- .npz ----------------------------------------------------------------------------------------------------
@pytest.fixture
def npz_case(tmp_path):
    reader = fuzz.Npz(tmp_path / "npz")
    reader.prepare()
    path = reader.live / "ds" / "train.neighbors.npz"
    return reader, path, fuzz.zip_members(path.read_bytes())


def _npz_error(reader, path):
    from data.neighbors import load_neighbor_table, read_neighbor_meta

    assert read_neighbor_meta(path) == {}  # unreadable: no metadata, no exception
    error, peak = _peak(lambda: load_neighbor_table(path, reader._table(), reader.K))
    assert isinstance(error, DataError) and str(path) in str(error), error
    assert peak < SMALL
    return str(error)


def test_npz_member_inflating_like_a_zip_bomb_is_refused(npz_case):
    reader, path, members = npz_case
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (48, %d), }" % ((64 << 20) // 8 // 48)
    prefix = fuzz.npy_join(header, b"")
    path.write_bytes(fuzz.merge_zip(fuzz.build_zip(members), {}, extra_zip=fuzz.deflated_zeros_member(
        "indices.npy", prefix, len(prefix) + (64 << 20))))
    assert "inflates" in _npz_error(reader, path)


def test_npz_header_claiming_a_huge_shape_is_refused_before_allocating(npz_case):
    """shape (48, 4·10^9) int64 with no data: NumPy allocated the 1.5 TB array (MemoryError) before reading."""
    reader, path, members = npz_case
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (48, 4000000000), }"
    path.write_bytes(fuzz.build_zip([(n, fuzz.npy_join(header, b"") if n == "indices.npy" else p) for n, p in members]))
    assert "claims shape" in _npz_error(reader, path)


def test_npz_header_numpy_cannot_tokenize_is_a_data_error(npz_case):
    """An unterminated header dict: NumPy's parser raised tokenize.TokenError, which nothing caught."""
    reader, path, members = npz_case
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (48,"
    path.write_bytes(fuzz.build_zip([(n, fuzz.npy_join(header, b"") if n == "indices.npy" else p) for n, p in members]))
    assert "not a readable neighbour table" in _npz_error(reader, path)


# --- HDF5 ----------------------------------------------------------------------------------------------------
@pytest.fixture
def keras2_file(tmp_path):
    path = tmp_path / "weights.h5"
    fuzz.write_keras2_h5(path)
    return path


def _inspect_error(path) -> str:
    from models.pretrained import inspect_weights

    error, peak = _peak(lambda: inspect_weights(path))
    assert isinstance(error, ConfigError) and str(path) in str(error), error
    assert peak < SMALL
    return str(error)


def test_keras2_h5_layer_listed_but_missing_is_a_config_error(keras2_file):
    """layer_names names a group the file lacks: h5py's KeyError escaped from the input-norm check."""
    import h5py

    with h5py.File(keras2_file, "r+") as handle:
        del handle["conv0"]
    assert "corrupt HDF5 file" in _inspect_error(keras2_file)


def test_keras2_h5_weight_that_is_a_group_is_a_config_error(keras2_file):
    import h5py

    with h5py.File(keras2_file, "r+") as handle:
        del handle["bn0"]["bn0/gamma:0"]
        handle["bn0"].create_group("bn0/gamma:0")
    assert "not a dataset" in _inspect_error(keras2_file)


def _unwritten_chunks(path, name: str) -> None:
    """Replace dataset ``name`` by a 512 MiB chunked one whose chunks were never written (a few KB on disk)."""
    import h5py

    with h5py.File(path, "r+") as handle:
        parent = handle[name].parent
        del handle[name]
        parent.create_dataset(name.rsplit("/", 1)[-1], shape=(fuzz.BOMB_BYTES // 4,), dtype="f4", chunks=(1 << 16,),
                              fillvalue=0.5)


def test_keras2_h5_unwritten_chunked_dataset_is_refused(keras2_file):
    _unwritten_chunks(keras2_file, "bn0/bn0/gamma:0")
    assert keras2_file.stat().st_size < 1 << 20
    assert "declares" in _inspect_error(keras2_file)


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    reader = fuzz.Checkpoint(tmp_path_factory.mktemp("ckpt"))
    reader.prepare()
    return reader


def test_checkpoint_unwritten_chunked_dataset_is_damaged(checkpoint_run, tmp_path):
    import shutil

    import h5py

    from engine.checkpoint import CheckpointDamaged, CheckpointManager

    run = tmp_path / "run"
    shutil.copytree(checkpoint_run.pristine / "run", run)
    weights = run / "ckpt" / "step-000000002" / "model.weights.h5"
    with h5py.File(weights, "r") as handle:
        names = []
        handle.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size > 1 else None)
    _unwritten_chunks(weights, names[0])
    error, peak = _peak(lambda: CheckpointManager.load_into(checkpoint_run.cache["model"], weights.parent))
    assert isinstance(error, CheckpointDamaged) and "declares" in str(error)
    assert peak < SMALL
    assert CheckpointManager(run).newest_intact().name == "step-000000001"  # --resume falls back past it


def test_checkpoint_state_with_a_non_object_model_signature_is_damaged(checkpoint_run, tmp_path):
    """state.json's 'model' a number: formatting the mismatch message raised AttributeError."""
    import shutil

    from engine.checkpoint import CheckpointDamaged, CheckpointManager

    run = tmp_path / "run"
    shutil.copytree(checkpoint_run.pristine / "run", run)
    state = run / "ckpt" / "step-000000002" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "model": 1.5}))
    with pytest.raises(CheckpointDamaged, match="'model' must be an object"):
        CheckpointManager.load_into(checkpoint_run.cache["model"], state.parent)


# --- JSON ----------------------------------------------------------------------------------------------------
JSON_CASES = {"5000_digit_number": '{"a": ' + "1" * 5000 + "}", "deep_nesting": "[" * 50000 + "]" * 50000}


def _json_readers(tmp_path):
    """(file to write, call that reads it, error type) for every reader of a JSON file the toolkit writes."""
    from common.io import output_kind
    from data.prepared import read_dataset_json
    from engine.checkpoint import CheckpointManager
    from engine.config import read_config_file
    from engine.export import read_export_metadata
    from engine.rundir import read_run_record
    from engine.rundir import prepare_run_dir
    from preprocess.pseudo_va import load_regressors

    record = {"run": {}, "method_config": {}, "data": {}}
    return {
        "dataset.json": ("dataset.json", lambda d: read_dataset_json(d), DataError),
        "config.json/read_run_record": ("config.json", lambda d: read_run_record(d), CheckpointError),
        "config.json/resume": ("config.json", lambda d: prepare_run_dir(d, record, resume=True, force=False), CheckpointError),
        "config.json/--config": ("config.json", lambda d: read_config_file(d / "config.json"), ConfigError),
        "fer_export.json": ("fer_export.json", lambda d: read_export_metadata(d), CheckpointError),
        "state.json": ("state.json", lambda d: CheckpointManager.read_state(d), CheckpointError),
        "pseudo-va config.json": ("config.json", lambda d: load_regressors(d), DataError),
        ".fer-output.json": (".fer-output.json", lambda d: output_kind(d), type(None)),
    }


@pytest.mark.parametrize("case", sorted(JSON_CASES))
@pytest.mark.parametrize("reader", ["dataset.json", "config.json/read_run_record", "config.json/resume",
                                    "config.json/--config", "fer_export.json", "state.json", "pseudo-va config.json",
                                    ".fer-output.json"])
def test_json_readers_refuse_5000_digit_numbers_and_deep_nesting(reader, case, tmp_path):
    """json.loads raises ValueError (not JSONDecodeError) for a number past 4300 digits and RecursionError for
    deep nesting: both escaped every reader as a traceback."""
    name, read, expected = _json_readers(tmp_path)[reader]
    (tmp_path / name).write_text(JSON_CASES[case])
    if expected is type(None):  # a damaged marker: not an output of the toolkit, never an exception
        assert read(tmp_path) is None
        return
    with pytest.raises(expected) as info:
        read(tmp_path)
    assert isinstance(info.value, FERError) and str(tmp_path) in str(info.value)


def test_pth_zip_claiming_an_unsupported_zip_version_is_a_data_error(torch_format, tmp_path):
    """A record whose 'version needed to extract' byte is damaged: zipfile raises NotImplementedError while
    sniffing the file, which escaped as a traceback (long fuzz run, pth-zip input 1170 of seed 0)."""
    path = tmp_path / "model.pth"
    torch_format.write_zip(path, {"w": np.zeros(3, np.float32)})
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6] = 84  # version needed to extract: 8.4
    path.write_bytes(bytes(data))
    from models.torch_checkpoint import load_state_dict

    with pytest.raises(DataError, match=str(path)):
        load_state_dict(path)


def test_csv_path_holding_a_nul_byte_is_a_row_error(tmp_path):
    """open() raises ValueError ("embedded null byte") for such a path: the image scan let it escape as a
    traceback (long fuzz run, csv input 892 of seed 0)."""
    from engine.splits import load_split

    reader = fuzz.Csv(tmp_path / "csv")
    reader.prepare()
    table = reader.live / "ds" / "train.csv"
    lines = table.read_text().splitlines()
    lines[3] = "train/a\x00b.jpg" + lines[3][lines[3].index(","):]
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.csv, row 3: .*null byte"):
        load_split(reader.live / "ds", "train.csv", 7, log=lambda *a: None)


def _claim_compressed_size(data: bytes, member: str, size: int) -> bytes:
    """``data`` (a zip) with ``member``'s compressed size in the central directory set to ``size``."""
    out = bytearray(data)
    start = out.index(b"PK\x01\x02")
    while True:
        name_length = struct.unpack("<H", out[start + 28:start + 30])[0]
        if out[start + 46:start + 46 + name_length].decode() == member:
            out[start + 20:start + 24] = struct.pack("<I", size)
            return bytes(out)
        start = out.index(b"PK\x01\x02", start + 4)


def test_pth_zip_record_claiming_more_stored_bytes_than_the_file_is_refused(torch_format, tmp_path):
    """A bit flip made data.pkl's compressed size 512 MiB in an 8 KB file: zipfile asked the file for that many
    bytes, and BufferedReader.read(n) allocates n first (long fuzz run, pth-zip input 771 of seed 0)."""
    path = tmp_path / "model.pth"
    torch_format.write_zip(path, {"w": np.zeros(3, np.float32)})
    path.write_bytes(_claim_compressed_size(path.read_bytes(), "archive/data.pkl", 512 << 20))
    from models.torch_checkpoint import load_state_dict

    error, peak = _peak(lambda: load_state_dict(path))
    assert isinstance(error, DataError) and "stored bytes in a file of" in str(error)
    assert peak < SMALL


def test_npz_member_claiming_more_stored_bytes_than_the_file_is_refused(npz_case):
    reader, path, members = npz_case
    path.write_bytes(_claim_compressed_size(path.read_bytes(), "indices.npy", 512 << 20))
    assert "stored bytes in a file of" in _npz_error(reader, path)


def test_config_json_float_setting_of_hundreds_of_digits_is_a_config_error(tmp_path):
    """``"lr": 1000…0`` (400 digits) parses as an int; float() of it raised OverflowError (long fuzz run,
    config-json input 3313 of seed 0)."""
    from engine.config import run_config_from_record

    with pytest.raises(ConfigError, match="lr = an integer of .* bits is not a finite number"):
        run_config_from_record({"run": {"lr": 10 ** 400}}, tmp_path / "config.json")


def test_csv_path_too_long_for_the_os_is_a_row_error(tmp_path):
    """A 5000-character path cell: pathlib's is_file() raises ENAMETOOLONG (it ignores only ENOENT and the like),
    a traceback (long fuzz run, csv input 911 of seed 0)."""
    from engine.splits import load_split

    reader = fuzz.Csv(tmp_path / "csv")
    reader.prepare()
    table = reader.live / "ds" / "train.csv"
    lines = table.read_text().splitlines()
    lines[36] = "x" * 5000 + lines[36][lines[36].index(","):]
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.csv, row 36: .*too long"):
        load_split(reader.live / "ds", "train.csv", 7, log=lambda *a: None)


def test_resume_refuses_a_state_json_whose_global_step_disagrees_with_the_weights(checkpoint_run, tmp_path):
    """state.json of step 2 saying global_step 8: --resume went on from step 8 with weights of step 2 (long fuzz
    run, checkpoint input 717 of seed 0); now the checkpoint is damaged and the older one is used."""
    import shutil

    from engine.checkpoint import CheckpointManager, resume_latest

    run = tmp_path / "run"
    shutil.copytree(checkpoint_run.pristine / "run", run)
    state = run / "ckpt" / "step-000000002" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "global_step": 8}))
    said = []
    step = resume_latest(CheckpointManager(run), checkpoint_run.cache["model"], log=said.append)
    assert step == 1 and any("global_step 8 does not match" in line for line in said), said


def test_config_json_integer_setting_of_hundreds_of_digits_is_a_config_error(tmp_path):
    """``"pad": 1000…0``: the integer check converted it to float first (OverflowError; long fuzz run,
    config-json input 7403 of seed 0)."""
    from engine.config import RunConfig, validate_run_config

    with pytest.raises(ConfigError, match="--pad"):
        validate_run_config(RunConfig(pad=10 ** 400))


def test_dataset_json_image_root_too_long_for_the_os_is_a_data_error(tmp_path):
    """image_root of 100 000 characters: Path.is_dir() raised ENAMETOOLONG (long fuzz run, dataset-json input
    3577 of seed 0)."""
    from engine.splits import load_split

    reader = fuzz.DatasetJson(tmp_path / "dj")
    reader.prepare()
    meta = reader.live / "ds" / "dataset.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "image_root": "a" * 100_000}))
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        load_split(reader.live / "ds", "train.csv", 7, log=lambda *a: None)
