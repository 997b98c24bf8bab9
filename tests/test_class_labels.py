"""Class names and ids: a pipeline's id2label and what a caller may ask for, resolved to ids."""

from __future__ import annotations

import numpy as np
import torch

from .pipeline_support import noise_for


def test_class_names_and_ids(make_flow_pipeline):
    pipe = make_flow_pipeline(id2label={0: "tench, Tinca tinca", 1: "goldfish", 2: "digit 3", 3: "3"})
    assert pipe.id2label == {0: "tench, Tinca tinca", 1: "goldfish", 2: "digit 3", 3: "3"}
    assert pipe.label_ids("goldfish") == [1]
    assert pipe.label_ids("digit 3") == [2]  # one name, not characters
    assert pipe.label_ids("3") == [3]  # a string is a name, even when it looks like a number
    assert pipe.label_ids(["Tench", "tinca tinca", 5, "GoldFish"]) == [0, 0, 5, 1]
    assert pipe.label_ids(torch.tensor([7, 8])) == [7, 8]
    assert pipe.label_ids(np.int64(9)) == [9]
    noise = noise_for(pipe, 2)
    by_name = pipe(["goldfish", "digit 3"], num_inference_steps=2, latents=noise, output_type="latent").images
    by_id = pipe([1, 2], num_inference_steps=2, latents=noise, output_type="latent").images
    assert torch.equal(by_name, by_id)
