"""Scale-out pieces of a training run: which launch set-ups are honoured (``scale_out``), and the sharding helpers
(``sharding``) on an unsharded model, where they must change nothing. The sharded side runs end to end in
``test_train_flow::test_fsdp2_on_gloo_shards_checkpoints_resumes_exactly_and_saves_the_ddp_pipeline``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers.training_utils import EMAModel

from flow_pipelines.training.scale_out import check_launch_environment
from flow_pipelines.training.sharding import SamplingModel, all_finite, full_tensor, full_tensors, shard_like

FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


def test_one_process_ddp_and_fsdp2_with_sharded_checkpoints_are_honoured() -> None:
    check_launch_environment({})
    check_launch_environment({"ACCELERATE_USE_FSDP": "false", "ACCELERATE_USE_DEEPSPEED": "False"})
    check_launch_environment(FSDP2)
    check_launch_environment(
        {**FSDP2, "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_OFFLOAD_PARAMS": "false"}
    )


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (
            {"ACCELERATE_USE_DEEPSPEED": "true"},
            "DeepSpeed \\(ACCELERATE_USE_DEEPSPEED=true\\).*allowed: one process",
        ),
        ({"ACCELERATE_USE_MEGATRON_LM": "TRUE"}, "Megatron-LM"),
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP version 1 \\(fsdp_version: 1\\).*set fsdp_version: 2"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP version 1"),
        ({**FSDP2, "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}, "fsdp_state_dict_type: FULL_STATE_DICT"),
        (
            {**FSDP2, "FSDP_OFFLOAD_PARAMS": "true"},
            "fsdp_offload_params: true.*set fsdp_offload_params: false",
        ),
    ],
)
def test_launch_set_ups_the_script_cannot_honour_are_named_with_what_is_allowed(
    environment: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_launch_environment(environment)


def test_unsharded_tensors_pass_through_untouched() -> None:
    tensor = torch.arange(6.0).reshape(2, 3)
    assert full_tensor(tensor) is tensor
    assert list(full_tensors([tensor, tensor], keep=False)) == [None, None]
    assert shard_like(tensor.double(), torch.zeros(2, 3)).dtype == torch.float32
    finite = all_finite([tensor, torch.tensor([1.0, math.inf]), torch.tensor([math.nan])])
    assert finite.tolist() == [True, False, False]


def test_an_unsharded_model_samples_itself_with_the_ema_swapped_in(make_dit) -> None:
    model = make_dit()
    ema = EMAModel(model.parameters(), decay=0.9)
    accelerator = SimpleNamespace(is_fsdp2=False, is_main_process=True, device=torch.device("cpu"))
    sampling = SamplingModel(accelerator, model, ema)
    assert sampling.model is model and sampling.trained is model
    assert sampling.refresh() is ema
    assert SamplingModel(accelerator, model, None).refresh() is None
