"""Frontends: PyTorch (torch.export / torch.fx) into the npuc IR."""

from .converters import register_converter
from .fx_import import capture

__all__ = ["capture", "register_converter"]
