"""Named exceptions of the `models` package.

Exception
 └── SamplingStopped   the caller's `should_stop()` returned True during sampling
"""

from __future__ import annotations

__all__ = ["SamplingStopped"]


class SamplingStopped(Exception):
    """Sampling ended early because the caller's `should_stop()` returned True.

    Raised by the sampling loop itself (checked before every denoiser step), never from a
    callback; nothing was produced, so there is nothing partial to clean up.
    """
