"""The one error class of the datasets package."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """Any data problem: unknown name, missing, truncated or corrupt file, checksum mismatch, bad limit.

    The message always names the offending file, URL or value.
    """
