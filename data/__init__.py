"""Annotation schema, dataset registry, neighbour tables, label-noise protocols and the tf.data pipeline."""
