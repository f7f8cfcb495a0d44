"""The synthetic identity set (data.synthetic.identities): fixed identities, varying faces, schema, disjointness."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import data.synthetic.identities as ids
from common.errors import ConfigError, DataError
from data.schema import load_table
from data.synthetic import (SPLIT_IDS, IdentityConfig, SyntheticConfig, class_priors, ensure_identities,
                            expression_params, generate, generate_identities, identity_config_hash, identity_params,
                            latent_class_sequence, sample_annotations, sample_identity)
from preprocess.synthetic import main

TINY = IdentityConfig(num_identities=4, images_per_identity=5, test_per_identity=2, image_size=32, workers=1)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_identities(tmp_path_factory.mktemp("ids") / "tiny", TINY, progress=False)


def test_layout_schema_and_split(tiny):
    assert sorted(p.name for p in tiny.iterdir()) == [".fer-output.json", "dataset.json", "identities.csv", "images", "test.csv",
                                                       "train.csv"]
    for split, per in (("train", 3), ("test", 2)):
        table = load_table(tiny / f"{split}.csv", 7, require_va=True, check_images=True, num_landmarks=68)
        frame = table.frame
        assert len(table) == 4 * per and table.image_root == tiny / "images"
        assert frame["path"].str.startswith(f"{split}/").all()
        assert np.bincount(frame["identity"], minlength=4).tolist() == [per] * 4
        # expression is the class the face shows most
        p = np.array([[float(v) for v in s.split(";")] for s in frame["true_distribution"]])
        assert np.array_equal(table.labels, p.argmax(1))
    meta = json.loads((tiny / "dataset.json").read_text())
    assert meta["config_hash"] == identity_config_hash(TINY) and meta["image_root"] == "images"
    assert meta["num_identities"] == 4 and meta["splits"] == {"train": 12, "test": 8}
    assert "workers" not in meta["config"]


def test_an_identity_keeps_its_parameters_and_identities_differ(tmp_path, monkeypatch):
    seen: dict[int, list[dict]] = {}
    real = ids.render_face

    def spy(rng, ex, image_size, occluder_prob, identity=None):
        seen.setdefault(spy.current, []).append({k: v for k, v in identity.items() if k != "gaze"})
        return real(rng, ex, image_size, occluder_prob, identity=identity)

    real_image = ids.render_identity_image

    def tag(config, identity, image, params=None):
        spy.current = identity
        return real_image(config, identity, image, params)

    monkeypatch.setattr(ids, "render_face", spy)
    monkeypatch.setattr(ids, "render_identity_image", tag)
    generate_identities(tmp_path / "spy", TINY, progress=False)
    assert sorted(seen) == [0, 1, 2, 3] and all(len(v) == 5 for v in seen.values())
    for person, params in seen.items():
        want = {k: v for k, v in identity_params(TINY, person).items() if k != "gaze"}
        assert all(_same(p, want) for p in params)  # every image of a person: the same identity
    firsts = [v[0] for v in seen.values()]
    for i in range(4):
        for j in range(i + 1, 4):
            assert firsts[i]["face_w"] != firsts[j]["face_w"]
            assert not np.array_equal(firsts[i]["skin"], firsts[j]["skin"])
    people = pd.read_csv(tmp_path / "spy" / "identities.csv")
    assert people["identity"].tolist() == [0, 1, 2, 3]
    assert people["face_w"].round(6).tolist() == [round(identity_params(TINY, j)["face_w"], 6) for j in range(4)]


def test_images_of_a_person_vary(tiny):
    train = pd.read_csv(tiny / "train.csv")
    person = train[train["identity"] == 0]
    assert person["path"].map(lambda p: hashlib.sha256((tiny / "images" / p).read_bytes()).hexdigest()).nunique() == 3
    assert person["landmarks"].nunique() == 3 and person["valence"].nunique() == 3  # pose and expression vary


def test_deterministic_whatever_the_worker_count(tiny, tmp_path):
    first = _tree_hashes(tiny)
    assert _tree_hashes(generate_identities(tmp_path / "again", TINY, progress=False)) == first
    pooled = IdentityConfig(**{**TINY.__dict__, "workers": 2})
    assert identity_config_hash(pooled) == identity_config_hash(TINY)
    assert _tree_hashes(generate_identities(tmp_path / "pooled", pooled, progress=False)) == first
    other = generate_identities(tmp_path / "seed1", IdentityConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    b = _tree_hashes(other)
    assert sum(first[k] == b.get(k) for k in first if k.endswith(".jpg")) == 0


def test_disjoint_from_the_benchmark(tiny, tmp_path):
    bench_config = SyntheticConfig(train_size=20, test_size=10, image_size=32, workers=1)
    bench = generate(tmp_path / "bench", bench_config, progress=False)
    jpgs = lambda root: {h for k, h in _tree_hashes(root).items() if k.endswith(".jpg")}  # noqa: E731
    assert not jpgs(bench) & jpgs(tiny)
    # Replay the benchmark's draws up to its identity (the order render_sample uses): no benchmark face
    # has the appearance of a person of the identity set.
    priors = class_priors(bench_config)
    people = [identity_params(TINY, j) for j in range(TINY.num_identities)]
    for split, n in (("train", 20), ("test", 10)):
        latents = latent_class_sequence(n, priors, bench_config.seed, SPLIT_IDS[split])
        for i in range(n):
            rng = np.random.default_rng([bench_config.seed, SPLIT_IDS[split], i])
            ann = sample_annotations(rng, int(latents[i]), bench_config, priors, majority=(split == "test"))
            expression_params(rng, ann["z"], ann["p"])
            face = sample_identity(rng)
            assert not any(face["face_w"] == p["face_w"] or _same(face, p) for p in people)


def test_io_contract_and_cache(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for force in (False, True):  # a folder this toolkit did not write is never replaced
        with pytest.raises(ConfigError, match="did not write"):
            generate_identities(out, TINY, force=force, progress=False)
    assert (out / "keep.txt").read_text() == "user data"
    monkeypatch.setenv("FER_DATA_HOME", str(tmp_path / "home"))
    path = ensure_identities(TINY, progress=False)
    assert path == tmp_path / "home" / f"synthetic-identities-{identity_config_hash(TINY)}"
    stamp = (path / "dataset.json").stat().st_mtime_ns
    assert ensure_identities(TINY, progress=False) == path
    assert (path / "dataset.json").stat().st_mtime_ns == stamp  # found, not regenerated
    with pytest.raises(DataError, match="config hash"):
        ensure_identities(IdentityConfig(**{**TINY.__dict__, "seed": 5}), root=path, progress=False)


def test_config_validation():
    for bad in (dict(num_identities=1), dict(images_per_identity=1), dict(test_per_identity=0),
                dict(test_per_identity=20), dict(seed=-1), dict(seed=2 ** 32), dict(image_size=8),
                dict(num_classes=5), dict(occluder_prob=2.0), dict(ambiguity=0.0)):
        with pytest.raises(ConfigError):
            IdentityConfig(**bad).validate()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["identities", "--out", str(out), "--num-identities", "3", "--images-per-identity", "3",
            "--test-per-identity", "1", "--image-size", "32", "--workers", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "3 identities" in captured.out and "100%" in captured.err
    assert len(pd.read_csv(out / "train.csv")) == 6 and len(pd.read_csv(out / "test.csv")) == 3
    assert main(argv) == 2  # existing output without --force
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["identities", "--out", str(tmp_path / "bad"), "--test-per-identity", "0"]) == 2
    assert "--test-per-identity: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
