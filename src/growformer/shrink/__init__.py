"""Weight subcloning: initialize a smaller transformer from a larger pretrained one.

``measure_importance`` runs calibration batches through the source with forward hooks;
``subclone`` keeps the most important hidden dimensions, layers, heads and FFN neurons and
rescales the readers; ``truncation_plan`` with ``apply_plan`` is the naive baseline;
``shrink_folder`` does it all for a model folder (``growformer shrink``).
"""

from growformer.shrink.blocks import choose_layers
from growformer.shrink.folder import shrink_folder
from growformer.shrink.importance import Importance, measure_importance
from growformer.shrink.plan import SubclonePlan, plan_subclone, truncation_plan
from growformer.shrink.report import REPORT_FILE, LayerReport, SubcloneReport
from growformer.shrink.rescale import reader_scale
from growformer.shrink.subclone import Subclone, apply_plan, subclone
from growformer.shrink.target import SHRINK_FIELDS, ShrinkError, resolve_shrink_target

__all__ = [
    "REPORT_FILE",
    "SHRINK_FIELDS",
    "Importance",
    "LayerReport",
    "ShrinkError",
    "Subclone",
    "SubclonePlan",
    "SubcloneReport",
    "apply_plan",
    "choose_layers",
    "measure_importance",
    "plan_subclone",
    "reader_scale",
    "resolve_shrink_target",
    "shrink_folder",
    "subclone",
    "truncation_plan",
]
