"""Dataset importers and generators that write the prepared-directory layout of ``data.registry``."""
