"""The method contract, checked for every registered method (and a toy one registered here).

For each method of :mod:`models.registry`: it builds through the engine on the tiny dataset; two train
steps give finite losses; only the batch's rows of every per-sample state variable move; a checkpoint
round trip restores every variable; the SavedModel export serves the same probabilities; two steps
under the float16 and bfloat16 mixed-precision policies stay finite with per-sample state in float32; an
unknown ``--set`` key and an out-of-range value of every numeric setting are a ConfigError naming it, and
every preset checks out; and a trained run (tiny_cnn, 2 epochs) killed after its first epoch resumes to the
uninterrupted run's weights, optimizer state and metrics, while the SavedModel it exported serves exactly
the probabilities ``evaluate.py`` computes on the test split. Adding a method to the registry adds it here
with no other change.
"""

from __future__ import annotations

import dataclasses
import json
import typing

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, build_run_model, tiny_run_config, train_run
from models.base import FERModel, Preset
from models.registry import METHODS, method_names, register_method

# --- a toy sixth method, a few lines, registered only here -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    score_momentum: float = 0.5  # EMA of each sample's loss

    def __post_init__(self):
        from common.errors import ConfigError

        if not 0.0 <= self.score_momentum <= 1.0:
            raise ConfigError(f"toy score_momentum must lie in [0, 1], got {self.score_momentum}")


class ToyModel(FERModel):
    """CE plus a per-sample EMA of the loss, logged as the uncertainty."""

    method_name = "toy"
    loss_names = ("ce",)

    def __init__(self, backbone, num_classes, num_train_samples, config, **kwargs):
        super().__init__(backbone, num_classes, num_train_samples, config, **kwargs)
        self.loss_ema = self.add_state("loss_ema", (self.num_train_samples,))

    def compute_losses(self, batch, watched, training=True):
        _, logits = self.embed(batch["image"], training=training)
        per_sample = keras.losses.sparse_categorical_crossentropy(batch["label"], logits, from_logits=True)
        return {"ce": tf.reduce_mean(per_sample)}, {"logits": logits, "per_sample": per_sample}

    def after_step(self, batch, outputs, watched, watched_grads):
        m = self.config.score_momentum
        old = tf.gather(self.loss_ema, batch["index"])
        self.scatter_rows(self.loss_ema, batch["index"], m * old + (1 - m) * tf.stop_gradient(outputs["per_sample"]))

    def per_sample_state(self):
        return {"uncertainty": tf.convert_to_tensor(self.loss_ema)}


@pytest.fixture(scope="module", autouse=True)
def toy_method():
    register_method("toy", ToyModel, ToyConfig, "Toy", "test-only method")
    yield
    METHODS.pop("toy", None)


ALL_METHODS = [*method_names(), "toy"]


# --- helpers ----------------------------------------------------------------------------------------------

def _per_sample_variables(model):
    n = model.num_train_samples
    return [v for v in model.non_trainable_variables if len(v.shape) >= 1 and int(v.shape[0]) == n]


def _batches(trainer, method_data, count):
    iterator = iter(trainer.train_dataset(method_data))
    return [next(iterator) for _ in range(count)]


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    """Per method: (trainer, model, method_data) after two compiled train steps, and what they changed."""
    cache = {}

    def get(method):
        if method not in cache:
            keras.mixed_precision.set_global_policy("float32")
            out = tmp_path_factory.mktemp(f"contract_{method}")
            trainer, model, method_data = build_method(tiny_dataset, out, method)
            step = tf.function(model.train_step)
            logs, moved = [], []
            for batch in _batches(trainer, method_data, 2):
                before = [v.numpy().copy() for v in _per_sample_variables(model)]
                logs.append({k: float(np.asarray(v)) for k, v in step(batch).items()})
                after = [v.numpy() for v in _per_sample_variables(model)]
                moved.append((batch["index"].numpy(), before, after))
            cache[method] = (trainer, model, method_data, logs, moved)
        return cache[method]

    return get


# --- the contract -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ALL_METHODS)
def test_two_steps_are_finite_and_hooks_are_callable(method, built):
    trainer, model, _, logs, _ = built(method)
    assert len(logs) == 2
    for step_logs in logs:
        assert step_logs and all(np.isfinite(v) for v in step_logs.values()), step_logs
    assert int(model.optimizer.iterations.numpy()) == 2
    context = trainer.context()
    assert isinstance(model.callbacks(context), list)
    assert isinstance(model.final_metrics(context), dict)
    state = model.per_sample_state()
    for name, values in state.items():
        values = np.asarray(values)
        assert values.shape == (model.num_train_samples,) and np.isfinite(values).all(), name
    outputs = model.predict_outputs(tf.zeros((2, 24, 24, 3)))
    np.testing.assert_allclose(np.asarray(outputs["probabilities"]).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_only_the_batch_rows_of_per_sample_state_move(method, built):
    _, model, _, _, moved = built(method)
    for index, before, after in moved:
        outside = np.setdiff1d(np.arange(model.num_train_samples), index)
        for old, new in zip(before, after):
            np.testing.assert_array_equal(old[outside], new[outside])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_checkpoint_round_trip_restores_every_variable(method, built, tmp_path):
    from engine.checkpoint import CheckpointManager

    trainer, model, _, _, _ = built(method)
    manager = CheckpointManager(tmp_path / "run")
    path = manager.save(model, {"global_step": 2, "epoch": 0, "step_in_epoch": 2, "time": 0.0})
    from engine.run import Run

    n = model.num_train_samples
    rebuilt = Run(trainer.cfg, log=lambda *a, **k: None)  # as evaluate.py rebuilds a run: no data
    fresh = build_run_model(rebuilt, n, rebuilt.model_cls.empty_method_data(rebuilt.method_cfg, n))
    manager.load_into(fresh, path, require_optimizer=True)
    assert len(fresh.weights) == len(model.weights)
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_export_serves_the_models_probabilities_and_carries_no_training_state(method, built, tmp_path):
    from data.pipeline import normalize
    from engine.export import export_saved_model, inference_variables

    trainer, model, _, _, _ = built(method)
    out = export_saved_model(model, tmp_path / "sm", 24, trainer.spec.class_names, method)
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    served = serve(images=tf.constant(images))
    direct = model.predict_outputs(normalize(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), np.asarray(direct["probabilities"]), atol=1e-5)
    assert sorted(served) == sorted(["probabilities", "label", *model.served_outputs])
    # The export holds what predict_outputs reads: the backbone's and heads' weights, no per-sample state.
    carried = {id(v) for v in inference_variables(model, 24)}
    assert {id(v) for v in model.backbone.variables} <= carried
    assert not carried & {id(v) for v in _per_sample_variables(model)}


# float16 (what --mixed-precision auto picks on CUDA) for every method; bfloat16 shares the code path
# apart from loss scaling, so two methods (one with per-sample state) cover it.
@pytest.mark.slow
@pytest.mark.parametrize("method, policy", [(m, "mixed_float16") for m in ALL_METHODS]
                         + [("ce", "mixed_bfloat16"), ("ldlva", "mixed_bfloat16")])
def test_mixed_precision_policies(method, policy, tiny_dataset, tmp_path):
    """CI has no GPU: the float16 (loss-scaled) and bfloat16 paths run on the CPU kernels. Losses stay
    finite, every variable (per-sample state included) stays float32, per-sample state still moves, and
    the probabilities a method builds its targets and banks from are float32."""
    try:
        trainer, model, method_data = build_method(tiny_dataset, tmp_path / "run", method, mixed_precision=policy)
        assert keras.mixed_precision.global_policy().name == policy
        assert model.backbone.compute_dtype == ("float16" if policy == "mixed_float16" else "bfloat16")
        # bfloat16 has float32's exponent range: no loss scaling.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
        before = [v.numpy().copy() for v in _per_sample_variables(model)]
        history = model.fit(trainer.train_dataset(method_data), epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
        for name, values in history.history.items():
            assert np.all(np.isfinite(values)), f"{name} = {values}"
        for variable in model.variables:
            assert variable.dtype in ("float32", "int32", "int64"), f"{variable.path} is {variable.dtype}"
            if variable.dtype == "float32":
                assert np.all(np.isfinite(variable.numpy())), f"{variable.path} not finite"
        if model.per_sample_state():
            after = [v.numpy() for v in _per_sample_variables(model)]
            assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "per-sample state did not move"
        batch = next(iter(trainer.train_dataset(method_data)))
        losses, outputs = model.compute_losses(batch, model.watched_tensors(batch), training=False)
        for name, value in losses.items():
            assert value.dtype == tf.float32 and np.isfinite(value.numpy()), (name, value)
        for name in ("logits", "probs", "target", "uncertainty"):
            if name in outputs:
                assert outputs[name].dtype == tf.float32, f"output {name} is {outputs[name].dtype}"
        assert model.predict_outputs(tf.zeros((1, 24, 24, 3)))["probabilities"].dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_registered_method_that_fails_to_import_fails_loudly():
    from models.registry import get_method

    register_method("broken", "models.does_not_exist:Model", "models.does_not_exist:Config")
    try:
        with pytest.raises(ImportError):
            get_method("broken")
    finally:
        METHODS.pop("broken")


# --- configuration: unknown and out-of-range settings, typed presets -----------------------------------------

def _resolve(method, **fields):
    from engine.config import RunConfig, resolve

    return resolve(RunConfig(dataset="synthetic", method=method, weights="none", **fields))


def _numeric_fields(config_cls):
    """``(name, int | float)`` of every number a ``--set`` may give (``X | None`` fields included)."""
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kinds = [t for t in (typing.get_args(hints[field.name]) or (hints[field.name],)) if t is not type(None)]
        if len(kinds) == 1 and kinds[0] in (int, float):
            yield field.name, kinds[0]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_an_unknown_setting_is_a_config_error_naming_it(method):
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown setting 'no_such_setting' for \w+Config; known: "):
        _resolve(method, set={"no_such_setting": "1"})


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_numeric_setting_rejects_an_out_of_range_value_by_name(method):
    """Each number of the method's config, given -1e9 and 1e9 by ``--set``: no traceback (only ConfigError),
    and at least one of the two is refused with a message naming the setting, when the command line is
    read. A setting any finite value suits is listed in the config's ``unbounded``."""
    from common.errors import ConfigError
    from models.registry import get_method

    _, config_cls = get_method(method)
    unbounded = getattr(config_cls, "unbounded", ())
    unchecked = []
    for name, kind in _numeric_fields(config_cls):
        refused = []
        for value in (kind(-1e9), kind(1e9)):
            try:
                _resolve(method, set={name: str(value)})
            except ConfigError as exc:
                assert name in str(exc), f"--set {name}={value}: the error does not name it: {exc}"
                refused.append(value)
        if not refused and name not in unbounded:
            unchecked.append(name)
    assert not unchecked, f"{method}: no range check on {unchecked} (or list them in {config_cls.__name__}.unbounded)"


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_preset_is_typed_and_resolves(method):
    from models.registry import get_method

    model_cls, config_cls = get_method(method)
    for name, preset in model_cls.presets.items():
        assert isinstance(preset, Preset), f"{method} preset {name} is a {type(preset).__name__}"
        cfg, _, _, method_cfg = _resolve(method, preset=name)
        for key, value in preset.run.items():
            assert getattr(cfg, key) == value, (name, key)
        for key, value in preset.method.items():
            assert getattr(method_cfg, key) == value, (name, key)


@pytest.mark.parametrize("section, settings, message", [
    ("method", {"score_momentom": 0.9}, "method setting 'score_momentom' is not a field of ToyConfig"),
    ("method", {"score_momentum": "high"}, r"method: score_momentum = 'high' has the wrong type"),
    ("method", {"score_momentum": 2.0}, r"toy score_momentum must lie in \[0, 1\]"),
    ("run", {"learning_rate": 0.1}, "run setting 'learning_rate' is not a field of RunConfig"),
    ("run", {"epochs": 2.5}, r"run: epochs = 2.5 has the wrong type"),
])
def test_a_bad_preset_names_the_field(section, settings, message, monkeypatch):
    from common.errors import ConfigError

    monkeypatch.setattr(ToyModel, "presets", {"bad": Preset(**{section: settings})})
    with pytest.raises(ConfigError, match="--preset bad: " + message):
        _resolve("toy", preset="bad")


# --- a trained run per method: killed after an epoch it resumes exactly; its SavedModel is evaluate.py ------

def _metrics_without_timings(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in ("timings_s", "run_dir")}


def _check_saved_model_serves_what_evaluate_computes(run_dir):
    """evaluate.py on the run (its latest checkpoint through ``predict_outputs``) and the run's SavedModel on
    the same test split (uint8 images as evaluate.py reads them for a SavedModel): the same labels and report
    (metrics.json's), and probabilities and served extras equal to float32 rounding. Not bit for bit: in the
    SavedModel's graph TensorFlow's optimizer rearranges the [-1, 1] scaling (x − 127.5)/127.5 that tf.data
    computes as written, 1 ulp on some inputs (measured: |Δp| ≤ 1.2e-7, DDAF's |Δva| ≤ 1.8e-6)."""
    from data.images import load_image_array
    from engine.export import load_export
    from engine.metrics import classification_report
    from engine.results import load_run_model, predict_split

    run, model, _ = load_run_model(run_dir, log=lambda *a, **k: None)
    run.load_splits(need_train=False)
    evaluated = predict_split(model, run.eval_dataset())
    serve, meta = load_export(run_dir / "saved_model")
    table = run.test_table
    images = load_image_array(table.image_root, table.paths, meta["image_size"], table.csv_path)
    served = serve(images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), evaluated["probabilities"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(served["label"].numpy(), evaluated["probabilities"].argmax(-1))
    assert sorted(served) == sorted(["probabilities", "label", *model.served_outputs])
    for name in model.served_outputs:
        np.testing.assert_allclose(served[name].numpy(), evaluated[name], rtol=0, atol=1e-5, err_msg=name)
    report = classification_report(table.labels, served["probabilities"].numpy(), len(meta["class_names"]),
                                   meta["class_names"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "confusion_matrix"):
        assert report[key] == metrics[key], key


# Two LA-Net runs of one configuration are usually bit-identical but once in a while (about 1 in 10–20 on a loaded
# machine) differ at float rounding, uninterrupted runs included: not a resume defect, cause not found yet
# (BENCHMARKS.md "Reliability campaigns" lists what was ruled out; the differences seen: weights ≤ 2e-6, the EL key
# queue 1.5e-4). Its case still asserts everything else (the SavedModel, the checkpoint's names and keys) and that
# every array is within this bound; only when the runs then differ at all is it an expected failure, so the open bug
# stays visible without turning CI red at random, and a state the resume failed to restore still fails the test.
LANET_ROUNDING_BOUND = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ALL_METHODS)
def test_a_run_killed_after_an_epoch_resumes_exactly_and_its_saved_model_is_what_evaluate_computes(
        method, tiny_dataset, tmp_path, monkeypatch):
    """One uninterrupted 2-epoch run (exported) serves both checks. A copy of its directory taken right after
    its epoch-1 checkpoint, which is what a kill at that instant leaves behind (the run's lock is an ``flock``
    that a copy does not hold), is resumed with ``--resume``: every weight, per-sample state and optimizer
    slot of the final checkpoint, and metrics.json, equal the uninterrupted run's."""
    from engine.checkpoint import CheckpointManager
    from helpers import copy_when_epoch_ends
    from helpers_cli import h5_datasets

    size = dict(epochs=2, batch_size=16)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    copy_when_epoch_ends(monkeypatch, straight, killed)
    train_run(tiny_run_config(tiny_dataset, straight, method, export=True, **size))
    monkeypatch.undo()
    _check_saved_model_serves_what_evaluate_computes(straight)
    first = CheckpointManager(killed).latest()
    train_run(tiny_run_config(tiny_dataset, killed, method, resume=True, **size))

    final = CheckpointManager(straight).latest()
    assert CheckpointManager(killed).latest().name == final.name != first.name
    reference = h5_datasets(final / "model.weights.h5")
    resumed = h5_datasets(killed / "ckpt" / final.name / "model.weights.h5")
    assert sorted(resumed) == sorted(reference) and any(k.startswith("optimizer/") for k in reference)
    different = [k for k in reference if not np.array_equal(resumed[k], reference[k])]
    if different and method == "lanet":
        worst = max((float(np.max(np.abs(resumed[k].astype(np.float64) - reference[k]))), k) for k in different)
        assert worst[0] <= LANET_ROUNDING_BOUND, f"beyond float rounding: {worst}"
        pytest.xfail(f"open: two LA-Net runs differ at float rounding now and then (BENCHMARKS.md, Reliability "
                     f"campaigns); here {len(different)} arrays, at most {worst[0]:.1e} ({worst[1]})")
    assert not different, different[:10]
    assert _metrics_without_timings(killed) == _metrics_without_timings(straight)
