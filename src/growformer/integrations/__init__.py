"""Growth schedules inside other training loops.

``growformer.integrations.transformers.GrowthCallback`` grows the model of a transformers
``Trainer``; ``growformer.integrations.lightning.GrowthCallback`` the model of a Lightning
``LightningModule``. Both take the schedules of ``growformer train`` (a ``Schedule`` or a TOML
run file) and share one driver (``driver.GrowthDriver``); this package imports neither
framework, each callback module imports its own.
"""
