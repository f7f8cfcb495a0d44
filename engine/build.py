"""The model of a run, built from its resolved settings: backbone (pretrained weights, frozen stages), the
method's model around it, compiled with the run's optimizer and built for the run's image size.

A factory: it changes no process-wide state (precision policy, determinism, seeds: that is
:func:`engine.setup.configure_runtime`, which a caller runs first for a reproducible build).
"""

from __future__ import annotations

from common.errors import ConfigError
from engine.setup import make_optimizer


def build_model(run, num_train_samples: int, method_inputs=None, strategy=None, load_weights: bool = True):
    """The compiled, built model of ``run`` (an :class:`engine.run.Run`: its ``cfg``, ``model_cls``,
    ``method_cfg`` and ``log``) for a training table of ``num_train_samples`` rows.

    ``method_inputs`` are what the method's ``prepare_data`` returned (its constructor arguments), or for a
    rebuilt model its ``empty_method_data``; ``strategy`` the run's tf.distribute strategy (default: the
    default one); ``load_weights=False`` (a rebuild whose checkpoint restores everything) skips reading the
    pretrained weights file but keeps the run's input normalisation.
    """
    import tensorflow as tf

    from data.pipeline import steps_per_epoch
    from models.backbones import build_backbone
    from models.base import MethodInputs

    cfg = run.cfg
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        # Keras splits each global batch across replicas and cannot build from an uneven first split.
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch; under --strategy {cfg.strategy} "
                          f"it must be a multiple of the {replicas} replicas")
    remainder = num_train_samples % cfg.batch_size
    if replicas > 1 and 0 < remainder < replicas:
        # An epoch's last batch would leave a replica with no samples (NaN BatchNorm statistics).
        raise ConfigError(f"with {replicas} replicas the last batch of each epoch ({remainder} of {num_train_samples} "
                          f"samples) leaves a replica empty; choose a --batch-size for which "
                          f"{num_train_samples} mod batch is 0 or at least {replicas}")
    steps = steps_per_epoch(num_train_samples, cfg.batch_size)
    method_inputs = method_inputs if method_inputs is not None else MethodInputs()
    with strategy.scope():
        backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights if load_weights else None,
                                  input_norm=cfg.input_norm)
        if cfg.freeze != "none":
            from models.backbones import freeze_backbone

            frozen = freeze_backbone(backbone, cfg.backbone, cfg.freeze)
            run.log(f"--freeze {cfg.freeze}: {frozen} backbone layers keep their initial weights")
        if load_weights and getattr(backbone, "fer_weights_report", None):
            from models.pretrained import format_load_summary

            run.log(f"--weights {cfg.weights}: {format_load_summary(backbone.fer_weights_report)}")
        model = run.model_cls(backbone, cfg.num_classes, num_train_samples, run.method_cfg, steps_per_epoch=steps,
                              total_epochs=cfg.epochs, **method_inputs.model_kwargs)
        optimizer = make_optimizer(cfg, steps)
        model.compile(optimizer=optimizer, jit_compile=cfg.jit)
        model.build_all(cfg.image_size)
        # After build_all: a head built lazily has its variables only now (the first step is traced later).
        if cfg.backbone_lr_multiplier != 1.0:
            optimizer.set_lr_multiplier(model.pretrained_variables(), cfg.backbone_lr_multiplier)
        for variables, multiplier in model.lr_multipliers():
            optimizer.set_lr_multiplier(variables, multiplier)
    return model
