"""EMA of weights: the average follows the formula, buffers are copied, bad decay refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.training.ema import EMA


def test_average_follows_the_warmed_up_formula() -> None:
    model = nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    expected = torch.ones(3)
    for step, value in enumerate([2.0, 4.0, -1.0, 3.0]):
        with torch.no_grad():
            model.weight.fill_(value)
            model.running_mean.fill_(value)
        ema.update(model, step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        assert torch.allclose(ema.model.weight, expected)
        assert torch.equal(ema.model.running_mean, model.running_mean)  # buffers copied
    assert not ema.model.weight.requires_grad and not ema.model.training


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_outside_the_open_interval_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\)"):
        EMA(nn.Linear(2, 2), decay)
