"""Small helpers shared by the bundle's modules; imports nothing of the bundle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["as_bool", "unwrap"]

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


def as_bool(value: Any, name: str = "flag") -> bool:
    """A config flag as a ``bool``: ``True``/``False``, ``0``/``1``, or a string such as ``"true"``/``"false"``.

    ``python -m monai.bundle run ... --overwrite false`` hands the config the *string* ``"false"``, which
    Python treats as true; the bundle reads its flags through this function so that they mean what they say.

    Raises:
        ValueError: any other value (e.g. ``"flase"``), naming the flag.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"'{name}' must be true or false, got {value!r}.")


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper, or the module itself."""
    return getattr(module, "module", module)
