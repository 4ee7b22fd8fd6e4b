"""PaFi: the shared magnitude mask (`mask.py`) and the part that trains its k entries
(`part.py`). sparse-local reuses both: the selection rule and the k-vector training."""

from common.methods.pafi.mask import (
    Mask,
    MaskSettings,
    backbone_mask,
    compute_mask,
    eligible_parameters,
    mask_settings,
)
from common.methods.pafi.part import MaskedDeltaPart

__all__ = ["Mask", "MaskSettings", "MaskedDeltaPart", "backbone_mask", "compute_mask",
           "eligible_parameters", "mask_settings"]
