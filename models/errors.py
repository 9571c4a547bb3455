"""Named exceptions of the `models` package.

Exception
 ├── SamplingStopped   the caller's `should_stop()` returned True during sampling
 └── ValueError
      ├── EvaluationError   inputs to an evaluation are unusable (the message says how to fix)
      └── UnsafeFileError   a file from elsewhere is malformed, oversized or leaves its folder

Zoo errors (`ZooError`, `UntrustedBuilderError`) live in `models.zoo.errors`.
"""

from __future__ import annotations

__all__ = ["EvaluationError", "SamplingStopped", "UnsafeFileError"]


class SamplingStopped(Exception):
    """Sampling ended early because the caller's `should_stop()` returned True.

    Raised by the sampling loop itself (checked before every denoiser step), never from a
    callback; nothing was produced, so there is nothing partial to clean up.
    """


class EvaluationError(ValueError):
    """Inputs to an evaluation are unusable; the message says how to fix them."""


class UnsafeFileError(ValueError):
    """A file from elsewhere (zoo, bundle, generated or adapter folder) is refused before it
    is acted on: malformed, larger than a limit (`models.limits`), or outside its folder.

    The message is one line naming the file and what is wrong with it.
    """
