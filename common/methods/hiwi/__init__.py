"""HiWi: the weight-space adapter (`adapter.py`) and the part that federates it (`part.py`)."""

from common.methods.hiwi.part import HiWiPart

__all__ = ["HiWiPart"]
