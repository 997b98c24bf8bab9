"""What the tests that sample a `FlowPipeline` share: recording the transformer's calls, seeded noise shaped like
a pipeline's latents, and Euler with classifier-free guidance written out."""

from __future__ import annotations

import contextlib

import torch

from flow_pipelines import FlowPipeline


@contextlib.contextmanager
def record_calls(transformer: torch.nn.Module):
    """Record (batch size, timesteps, class labels) of every transformer forward."""
    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs, output):
        calls.append(
            (kwargs["hidden_states"].shape[0], kwargs["timestep"].clone(), kwargs["class_labels"].clone())
        )

    handle = transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def euler_reference(
    transformer, noise: torch.Tensor, labels: list[int], steps: int, scale: float, interval=(0.0, 1.0)
) -> torch.Tensor:
    """Euler on dx/dsigma = v from 1 to 0 in equal steps, guidance from separate cond/uncond calls."""
    x = noise.clone()
    cond_ids = torch.tensor(labels)
    null_ids = torch.full_like(cond_ids, transformer.config.num_classes)
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).float()
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            t = (sigma * 1000).expand(len(labels))
            velocity = transformer(x, t, cond_ids).sample
            if scale != 1.0 and interval[0] <= float(sigma) <= interval[1]:
                uncond = transformer(x, t, null_ids).sample
                velocity = uncond + scale * (velocity - uncond)
            x = x + (sigma_next - sigma) * velocity
    return x


def noise_for(pipeline: FlowPipeline, batch: int, seed: int = 0) -> torch.Tensor:
    config = pipeline.transformer.config
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.in_channels, config.sample_size, config.sample_size, generator=generator)
