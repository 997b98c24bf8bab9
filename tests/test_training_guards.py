"""Non-finite values stop a run: the loss before backward, the gradient before the update, the weights before
a save, each naming the step."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.training_utils import EMAModel

from flow_pipelines.training.guards import check_finite_gradients, check_finite_loss, check_finite_weights


def test_each_guard_passes_finite_values_and_names_the_step_of_a_non_finite_one(tmp_path) -> None:
    check_finite_loss(torch.tensor(0.5), 3, 0, tmp_path)
    check_finite_gradients(torch.tensor(1e30), 3, tmp_path)
    with pytest.raises(FloatingPointError, match="loss is nan at step 4 \\(micro-batch 2\\)"):
        check_finite_loss(torch.tensor(math.nan), 3, 1, tmp_path)
    with pytest.raises(FloatingPointError, match="gradient norm is inf at step 4"):
        check_finite_gradients(torch.tensor(math.inf), 3, tmp_path)


def test_weights_and_ema_weights_are_both_checked(make_dit) -> None:
    model = make_dit()
    ema = EMAModel(model.parameters(), decay=0.9)
    check_finite_weights(model, ema, 7)
    with torch.no_grad():
        ema.shadow_params[3].fill_(math.inf)
    name = list(dict(model.named_parameters()))[3]
    with pytest.raises(FloatingPointError, match=f"after step 7 \\(EMA {name}\\); nothing was saved"):
        check_finite_weights(model, ema, 7)
    with torch.no_grad():
        model.final_layer.linear.bias[0] = math.nan
    with pytest.raises(FloatingPointError, match="\\(final_layer.linear.bias\\)"):
        check_finite_weights(model, None, 7)
