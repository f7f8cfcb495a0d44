"""The Python API (fer_api.Predictor): the README's three-line example in a fresh process, and its inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import ROOT, build_method

# Where the notebook example is documented (the README once merged; its draft until then).
EXAMPLE_FILES = (ROOT / "README.md", ROOT / "docs" / "pending" / "issue31a.md")


def readme_example() -> str:
    """The ```python block that starts with ``from fer_api import Predictor``, verbatim."""
    for path in EXAMPLE_FILES:
        if path.is_file():
            found = re.search(r"```python\n(from fer_api import Predictor\n.*?)```", path.read_text(encoding="utf-8"),
                              re.S)
            if found:
                return found.group(1)
    pytest.fail(f"no `from fer_api import Predictor` example in {', '.join(p.name for p in EXAMPLE_FILES)}")


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    """A run directory with its exported SavedModel (an untrained CE model: the API is under test)."""
    from engine.export import export_saved_model

    run = tmp_path_factory.mktemp("api") / "run"
    built, model, _ = build_method(tiny_dataset, run, method="ce")
    export_saved_model(model, run / "saved_model", 24, built.spec.class_names, "ce", log=lambda *a: None)
    return run


@pytest.fixture(scope="module")
def predictor(run_dir):
    from fer_api import Predictor

    return Predictor.from_run(run_dir)


@pytest.fixture(scope="module")
def grace_hopper():
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.mark.slow
def test_readme_example_runs_in_a_fresh_process(run_dir, grace_hopper, tmp_path):
    """The documented three lines, verbatim, in a new interpreter (as a notebook runs them: the last
    line's value is what the cell shows)."""
    pytest.importorskip("mtcnn")
    import cv2

    example = readme_example()
    lines = example.strip().splitlines()
    assert len(lines) == 3, example
    (tmp_path / "runs").mkdir()
    os.symlink(run_dir, tmp_path / "runs" / "synthetic_ce_seed0")
    shutil.copy(grace_hopper, tmp_path / "photo.jpg")
    (tmp_path / "more_photos" / "inner").mkdir(parents=True)
    image = cv2.imread(str(grace_hopper))
    cv2.imwrite(str(tmp_path / "more_photos" / "inner" / "small.png"), cv2.resize(image, (256, 300)))
    cv2.imwrite(str(tmp_path / "more_photos" / "grey.jpg"), np.full((120, 160, 3), 128, np.uint8))
    notebook = ("import sys\ncell = sys.stdin.read().strip().splitlines()\nspace = {}\n"
                "exec('\\n'.join(cell[:-1]), space)\nshown = eval(cell[-1], space)\n"
                "print(shown.to_json(orient='records'))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", notebook], input=example, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1]))
    assert frame["source"].tolist() == ["photo.jpg", str(Path("more_photos") / "grey.jpg"),
                                        str(Path("more_photos") / "inner" / "small.png")]
    photo, grey, small = (frame.iloc[i] for i in range(3))
    assert photo["detected"] and photo["confidence"] > 0.9 and 80 < photo["w"] < 400  # the face, not the photo
    assert small["detected"] and not grey["detected"]  # no face: the centre square
    probabilities = frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()
    assert probabilities.shape[1] == 7 and np.allclose(probabilities.sum(1), 1, atol=1e-5)


def test_arrays_pil_images_and_paths_give_the_same_faces(predictor, grace_hopper):
    from PIL import Image

    from fer_api import FaceRecord, read_photo

    image = read_photo(grace_hopper)
    records = predictor.predict([grace_hopper, image, np.stack([image, image[:, ::-1]]), Image.fromarray(image)],
                                detect=False)
    assert [r.source for r in records] == [str(grace_hopper), "array[0]", "array[1]", "array[2]", "array[3]"]
    assert all(isinstance(r, FaceRecord) and r.faces == 1 and not r.detected for r in records)
    same = [records[i].probabilities for i in (0, 1, 2, 4)]
    assert all(p == pytest.approx(same[0], abs=1e-6) for p in same)
    frame = records.to_pandas()
    assert list(frame.columns[:9]) == ["source", "face", "faces", "x", "y", "w", "h", "confidence", "detected"]
    assert frame.columns[-2:].tolist() == ["label", "error"] and "valence" not in frame  # CE: no VA head
    assert (frame["label"] == [r.label for r in records]).all()
    assert frame.equals(predictor.predict_frame([grace_hopper, image, np.stack([image, image[:, ::-1]]),
                                                 Image.fromarray(image)], detect=False))


def test_the_probabilities_are_the_serving_models(predictor, grace_hopper):
    from fer_api import centre_face, read_photo

    face = centre_face(read_photo(grace_hopper))
    record = predictor.predict(grace_hopper, detect=False)[0]
    expected = predictor.serve(images=face.crop[None])["probabilities"].numpy()[0]
    np.testing.assert_allclose([record.probabilities[n] for n in predictor.class_names], expected, atol=1e-6)
    assert record.box == face.box and record.label == predictor.class_names[int(expected.argmax())]


def test_bad_inputs(predictor, run_dir, tmp_path):
    from common.errors import CheckpointError, ConfigError, DataError
    from fer_api import Predictor

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg: not a decodable image"):
        predictor.predict([broken], detect=False)
    records = predictor.predict([broken, np.zeros((30, 30, 3), np.uint8)], detect=False, errors="record")
    assert records[0].error.startswith("not a decodable image") and records[0].face is None
    assert records[1].error is None and records[1].label in predictor.class_names
    with pytest.raises(DataError, match="uint8"):
        predictor.predict(np.zeros((30, 30, 3), np.float32), detect=False)
    with pytest.raises(ConfigError, match="cannot predict a int"):
        predictor.predict([3], detect=False)
    with pytest.raises(CheckpointError, match="no SavedModel"):
        Predictor.from_run(tmp_path)
    assert Predictor.from_export(run_dir / "saved_model").class_names == predictor.class_names
