"""Small pure pieces of the criteria, against numbers worked out by hand."""
from __future__ import annotations

import pytest
import torch

from prunescope.criteria.activations import mean_loss


def test_mean_loss_is_per_scored_token():
    # two sequences: log-prob -3 over 1 token, -5 over 4 tokens -> 8 / 5 per token (not (3 + 5/4) / 2)
    assert mean_loss(torch.tensor([[-3.0, 1.0], [-5.0, 4.0]])) == pytest.approx(8 / 5)
    assert mean_loss(torch.tensor([[-3.0, 1.0]])) == pytest.approx(3.0)
    assert mean_loss(torch.tensor([[0.0, 0.0]])) == 0.0  # nothing scored: no division by zero
