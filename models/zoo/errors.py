"""Named exceptions of the zoo package.

ValueError
 └── ZooError                 a zoo, a checkpoint or an architecture spec is malformed
      └── UntrustedBuilderError  a file names a builder that nobody running the command trusted
"""

from __future__ import annotations

__all__ = ["UntrustedBuilderError", "ZooError"]


class ZooError(ValueError):
    """A zoo, a checkpoint or an architecture spec is malformed; the message says how to fix it."""


class UntrustedBuilderError(ZooError):
    """An architecture spec names a builder that is neither the project's nor trusted.

    ``builder`` is the ``module:function`` it named; the message says how to trust it.
    Nothing of the builder's module was imported.
    """

    def __init__(self, builder: str, message: str) -> None:
        super().__init__(message)
        self.builder = builder
