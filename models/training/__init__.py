"""Training RPG generators on zoos.

- ``options``: ``TrainConfig`` (what ``rpg train`` exposes) and how it resolves to a generator
  config on a zoo (``build_model_config``), plus the loop's small rules;
- ``loop``: ``train(zoo, out, options)``: the training loop, bundle saves, resume;
- ``data``: the trainer's view of a zoo (tokens per batch);
- ``ema``: the exponential moving average of the weights that bundles store.
"""

from __future__ import annotations

from models.training.loop import train
from models.training.options import TrainConfig, TrainResult, pick_device

__all__ = ["TrainConfig", "TrainResult", "pick_device", "train"]
