"""Run-wide TensorFlow set-up: the process's runtime (precision policy, op determinism, seed), the optimizer
and its schedule, the distribution strategy."""

from __future__ import annotations

import os

from common.errors import ConfigError


def _with_lr_multipliers(base):
    """``base`` (a Keras optimizer class) with per-variable learning-rate multipliers.

    Discriminative fine-tuning (Howard & Ruder, ACL 2018, Sec. 3.2): the pretrained backbone at a fraction of
    the heads' learning rate (``--backbone-lr-multiplier``). Keras 3 optimizers take one learning rate; every
    one of them updates a variable in ``update_step(gradient, variable, learning_rate)``, so scaling the rate
    there is an exact per-variable rate for Adam, AdamW and SGD (moments and momentum buffers are unchanged;
    AdamW's decoupled weight decay uses the unscaled rate). Adam's step is invariant to the gradient's scale,
    which is why scaling gradients could not do this.
    """

    class WithLRMultipliers(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lr_multipliers: dict = {}  # _var_key(variable) → multiplier

        def set_lr_multiplier(self, variables, multiplier: float) -> None:
            """Train ``variables`` at ``multiplier`` × the learning rate (before the first step is traced)."""
            for variable in variables:
                self.lr_multipliers[self._var_key(variable)] = float(multiplier)

        def update_step(self, gradient, variable, learning_rate):
            multiplier = self.lr_multipliers.get(self._var_key(variable), 1.0)
            if multiplier != 1.0:
                learning_rate = learning_rate * multiplier
            return super().update_step(gradient, variable, learning_rate)

    WithLRMultipliers.__name__ = WithLRMultipliers.__qualname__ = base.__name__
    return WithLRMultipliers


def make_optimizer(cfg, steps_per_epoch: int):
    """The run's optimizer and schedule (each takes per-variable rate multipliers: :func:`_with_lr_multipliers`)."""
    import keras

    lr = cfg.lr
    if cfg.lr_schedule == "constant":
        schedule = lr
    elif cfg.lr_schedule == "step":
        # Piecewise constant per iteration, as the LDLVA release (a boundary step uses the old value).
        bounds = [int(e) * steps_per_epoch for e in cfg.lr_steps]
        values = [lr * cfg.lr_decay ** i for i in range(len(bounds) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values) if bounds else lr
    elif cfg.lr_schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(cfg.epochs * steps_per_epoch, 1))
    elif cfg.lr_schedule == "exponential":
        schedule = keras.optimizers.schedules.ExponentialDecay(lr, steps_per_epoch, cfg.lr_decay, staircase=True)
    elif cfg.lr_schedule == "linear":
        # Linear decay to 0 over the whole run, per iteration (LA-Net release: LinearLR(1 → 0)).
        schedule = keras.optimizers.schedules.PolynomialDecay(lr, max(cfg.epochs * steps_per_epoch, 1), 0.0, power=1.0)
    else:
        raise ConfigError(f"unknown --lr-schedule '{cfg.lr_schedule}' (constant, step, cosine, exponential, linear)")
    if cfg.optimizer == "adam":
        return _with_lr_multipliers(keras.optimizers.Adam)(learning_rate=schedule)
    if cfg.optimizer == "adamw":
        # An explicit 0 means no decay; unset resolves to the help's default 0 (None only before resolving).
        return _with_lr_multipliers(keras.optimizers.AdamW)(learning_rate=schedule, weight_decay=cfg.weight_decay or 0.0)
    if cfg.optimizer == "sgd":
        return _with_lr_multipliers(keras.optimizers.SGD)(learning_rate=schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "lamb":
        # Layer-wise trust ratio ||w|| / ||Adam update||: every variable moves by --lr of its own norm per step
        # (a zero-initialised bias by plain Adam's step). Keras's Lamb applies no weight decay.
        return _with_lr_multipliers(keras.optimizers.Lamb)(learning_rate=schedule)
    raise ConfigError(f"unknown --optimizer '{cfg.optimizer}' (adam, adamw, sgd, lamb)")


def configure_runtime(cfg) -> str:
    """Set what TensorFlow and Keras keep per process for a run: the global precision policy, op determinism
    (unless ``--nondeterministic``) and every seed (Python, NumPy, TensorFlow). The one place where the engine
    changes global state; call it right before building the run's model, so that the model's initial weights
    are drawn from ``--seed``. Returns the precision policy's name."""
    import keras
    import tensorflow as tf

    policy = setup_precision(cfg.mixed_precision)
    if not cfg.nondeterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    return policy


def setup_precision(mode: str) -> str:
    import keras
    import tensorflow as tf

    if mode == "auto":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    elif mode in ("off", "float32"):
        policy = "float32"
    elif mode in ("mixed_float16", "mixed_bfloat16"):
        policy = mode
    else:
        raise ConfigError(f"unknown --mixed-precision '{mode}' (auto, off, mixed_float16, mixed_bfloat16)")
    keras.mixed_precision.set_global_policy(policy)
    return policy


_MIRRORED_STRATEGIES = [0]


def make_strategy(name: str):
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every MirroredStrategy numbers its collectives from the same base, and TensorFlow remembers each
        # (group, instance) key's op type per process: a second strategy in one process (benchmark.py
        # trains several runs in one process) would reuse a key for another collective type and fail.
        # Give each strategy its own key range (TensorFlow's own tests do the same).
        _MIRRORED_STRATEGIES[0] += 1
        if hasattr(tf.distribute.MirroredStrategy, "_collective_key_base"):
            tf.distribute.MirroredStrategy._collective_key_base = 100_000 * _MIRRORED_STRATEGIES[0]
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multiworker needs the TF_CONFIG environment variable (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown --strategy '{name}' (default, mirrored, multiworker)")
