"""Backbones, the base FER model and one file per method (registered by name in ``models.registry``)."""
