"""Exact log-likelihood of a flow model by the probability-flow ODE and the instantaneous change of variables.

The sampler integrates ``dx/dsigma = v(x, sigma)`` from noise (sigma = 1) to data (sigma = 0); run
backwards from a data point, the same ODE carries ``x`` to its latent ``x_1``, and along the way
(continuity equation)::

    d log p_sigma(x_sigma) / dsigma = -div v(x_sigma, sigma)
    =>  log p_0(x) = log N(x_1; 0, I) + integral_0^1 div v(x_sigma, sigma) dsigma

(Chen et al. 2018; Grathwohl et al. 2019; Song et al. 2021). The augmented state ``(x, integral)`` is
integrated on a fixed grid with RK4 or Heun, or adaptively (Dormand–Prince, scipy's ``RK45``). The divergence
is exact (autograd, ``sum_i dv_i/dx_i``: one backward pass per dimension, for small dimensions) or
Hutchinson's estimate ``eps^T (dv/dx) eps`` with a Rademacher or Gaussian probe drawn once per solve and
held fixed, so that the ODE stays deterministic and the estimate of the whole integral is unbiased.

Ends of the path: the integration runs from ``sigma_min`` (default 1e-5) rather than 0, so the result is
the density of the data shrunk by ``1 - sigma_min`` and blurred by noise of std ``sigma_min``; for data
dequantised over bins of width 2/255 this changes the log-density by about ``D * sigma_min`` nats
(< 1e-4 bits per dimension), and it keeps models that predict ``x0`` away from their division by sigma.
It runs to ``sigma_max`` (default 1, where the marginal is exactly N(0, I)); an epsilon-predicting model is
singular at sigma = 1 and needs ``sigma_max < 1``, with the prior then taken as ``N(0, sigma_max^2 I)`` (it
ignores the data's ``(1 - sigma_max)^2`` share of the variance).

Bits per dimension of 8-bit images: pixels ``k`` in {0..255} map to the model range by ``k / 127.5 - 1``
(:func:`flow_pipelines.images.pixels_to_model_range`), i.e. bins of width ``2/255``, and are
dequantised with uniform noise over their bin. With ``D`` dimensions and the continuous log-density
``log p(x)`` in nats::

    bpd = -log p(x) / (D ln 2) - log2(2/255) = -log p(x) / (D ln 2) + log2(127.5)

the discrete code length per dimension; averaged over the dequantisation noise it is an upper bound
(Jensen) on the model's discrete negative log-likelihood (Theis et al., 2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..guidance import GuidedVelocity

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity(x, sigma) -> v``: ``x`` of shape ``(B, ...)``, ``sigma`` of shape ``(B,)``."""

METHODS: tuple[str, ...] = ("rk4", "heun", "adaptive")
DIVERGENCES: tuple[str, ...] = ("auto", "exact", "hutchinson")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")
BIN_WIDTH_8BIT = 2.0 / 255.0
"""Width of one 8-bit level in the model range ``k / 127.5 - 1``."""


@dataclass
class LikelihoodResult:
    """Outcome of one likelihood solve, one entry per sample.

    Args:
        log_prob: ``log p(x)`` in nats (at ``sigma_min``; see the module notes).
        prior_log_prob: ``log N(x_1)`` of the latent reached at ``sigma_max``.
        delta_log_prob: The divergence integral, ``log_prob - prior_log_prob``.
        latent: The latent ``x_1``.
        num_function_evals: Velocity evaluations (each with its divergence) used by the solver.
    """

    log_prob: torch.Tensor
    prior_log_prob: torch.Tensor
    delta_log_prob: torch.Tensor
    latent: torch.Tensor
    num_function_evals: int


def standard_normal_log_prob(x: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """``log N(x; 0, std^2 I)`` summed over all non-batch dimensions.

    Args:
        x: ``(B, ...)``.
        std: Standard deviation.

    Returns:
        ``(B,)`` log-densities.
    """
    flat = x.flatten(1)
    dims = flat.shape[1]
    return -0.5 * (flat**2).sum(dim=1) / std**2 - dims * (math.log(std) + 0.5 * math.log(2 * math.pi))


def likelihood_sigmas(
    num_steps: int, sigma_min: float = 1e-5, sigma_max: float = 1.0, rho: float = 1.0
) -> torch.Tensor:
    """The fixed integration grid from ``sigma_min`` up to ``sigma_max``.

    ``sigma_i = (a + i / N (b - a))^rho`` with ``a = sigma_min^(1/rho)``, ``b = sigma_max^(1/rho)``: uniform for
    ``rho = 1``; larger ``rho`` puts more steps near the data, where a trained velocity changes fastest.

    Args:
        num_steps: Number of steps ``N``.
        sigma_min: Start (data side), > 0 unless the model tolerates 0.
        sigma_max: End (noise side), <= 1.
        rho: Spacing exponent (>= 1).

    Returns:
        ``N + 1`` increasing float64 noise levels.
    """
    low, high = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (low + torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64) * (high - low)) ** rho


def _check_options(
    method: str,
    divergence: str,
    probe: str,
    num_probes: int,
    num_steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; allowed: {', '.join(METHODS)}.")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is not supported; allowed: {', '.join(DIVERGENCES)}.")
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r} is not supported; allowed: {', '.join(PROBES)}.")
    if num_probes < 1:
        raise ValueError(f"num_probes={num_probes} must be >= 1.")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1.")
    if not 0.0 <= sigma_min < sigma_max <= 1.0:
        raise ValueError(
            f"Need 0 <= sigma_min < sigma_max <= 1; got sigma_min={sigma_min}, sigma_max={sigma_max}."
        )
    if rho < 1.0:
        raise ValueError(f"rho={rho} must be >= 1 (1 is a uniform grid).")


def _draw_probes(
    shape: tuple[int, ...], num_probes: int, kind: str, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    if kind == "rademacher":
        probes = torch.randint(0, 2, (num_probes, *shape), generator=generator, device=device) * 2 - 1
    else:
        probes = torch.randn((num_probes, *shape), generator=generator, device=device, dtype=torch.float64)
    return probes.to(like.device, like.dtype)


def _exact_divergence(velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_i dv_i / dx_i`` per sample: one backward pass per dimension, batched when autograd allows."""
    flat = velocity.flatten(1)
    dims = flat.shape[1]
    eye = torch.eye(dims, device=x.device, dtype=flat.dtype)
    basis = eye[:, None, :].expand(dims, flat.shape[0], dims)
    try:
        (rows,) = torch.autograd.grad(flat, x, grad_outputs=basis, is_grads_batched=True, retain_graph=True)
        return torch.einsum("ibi->b", rows.flatten(2))
    except RuntimeError:
        # Some operations have no batching rule for their backward: one dimension at a time.
        divergence = torch.zeros(flat.shape[0], device=x.device, dtype=flat.dtype)
        for i in range(dims):
            (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
            divergence = divergence + row.flatten(1)[:, i]
        return divergence


def _hutchinson_divergence(velocity: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """Mean over probes of ``eps^T (dv/dx) eps``, one vector-Jacobian product per probe."""
    total = torch.zeros(x.shape[0], device=x.device, dtype=velocity.dtype)
    for k, probe in enumerate(probes):
        (vjp,) = torch.autograd.grad(velocity, x, grad_outputs=probe, retain_graph=k < len(probes) - 1)
        total = total + (vjp * probe).flatten(1).sum(dim=1)
    return total / len(probes)


def velocity_divergence(
    velocity: VelocityFn, x: torch.Tensor, sigma: torch.Tensor, probes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The velocity and its divergence ``sum_i dv_i/dx_i`` at a batch of points.

    Args:
        velocity: ``velocity(x, sigma) -> v``.
        x: Points ``(B, ...)``.
        sigma: ``(B,)`` noise levels.
        probes: ``None`` for the exact divergence (one backward pass per dimension), or Hutchinson probes
            ``(K, B, ...)``: the estimate is the mean over them of ``eps^T (dv/dx) eps``.

    Returns:
        ``(v, div)``, detached: ``v`` shaped like ``x``, ``div`` of shape ``(B,)``.
    """
    with torch.enable_grad():
        points = x.detach().requires_grad_(True)
        v = velocity(points, sigma)
        div = _exact_divergence(v, points) if probes is None else _hutchinson_divergence(v, points, probes)
    return v.detach(), div.detach()


def log_likelihood(
    velocity: VelocityFn,
    x: torch.Tensor,
    num_steps: int = 32,
    method: str = "rk4",
    divergence: str = "auto",
    num_probes: int = 1,
    probe: str = "rademacher",
    sigma_min: float = 1e-5,
    sigma_max: float = 1.0,
    rho: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_exact_dims: int = 64,
    generator: torch.Generator | None = None,
) -> LikelihoodResult:
    """Log-likelihood of data points under the flow, by the instantaneous change of variables.

    The model must treat the samples of a batch independently (no batch statistics): the divergence is
    taken through one batched backward pass.

    Args:
        velocity: ``velocity(x, sigma) -> v`` (a :class:`~flow_pipelines.guidance.GuidedVelocity` of a model, or
            ``GaussianFlow.velocity``). A model whose prediction carries no information at an end of the range
            (a sample prediction at sigma = 0, an epsilon one at sigma = 1 on the straight path) needs that end
            moved inside (``sigma_min > 0``, ``sigma_max < 1``).
        x: Data points ``(B, ...)`` in the model's range.
        num_steps: Steps of the fixed grid (``rk4``: 4 evaluations per step, ``heun``: 2).
        method: ``"rk4"``, ``"heun"`` or ``"adaptive"`` (Dormand–Prince RK45 via scipy, ``rtol`` / ``atol``).
        divergence: ``"exact"``, ``"hutchinson"``, or ``"auto"`` (exact up to ``max_exact_dims`` dimensions).
        num_probes: Hutchinson probes averaged per evaluation.
        probe: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        sigma_min: Data-side end of the integration (see the module notes).
        sigma_max: Noise-side end.
        rho: Grid spacing exponent (1 = uniform).
        rtol: Relative tolerance of the adaptive solver.
        atol: Absolute tolerance of the adaptive solver.
        max_exact_dims: Dimension up to which ``"auto"`` uses the exact divergence.
        generator: Random source of the probes.

    Returns:
        The :class:`LikelihoodResult` (computed in float64 where the device allows).

    Raises:
        ValueError: For an unknown option, an empty batch, or an integration range the model's prediction
            type cannot be evaluated on.
    """
    _check_options(method, divergence, probe, num_probes, num_steps, sigma_min, sigma_max, rho)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, ...); got shape {tuple(x.shape)}.")
    if isinstance(velocity, GuidedVelocity):
        for end, name, advice in (
            (sigma_min, "sigma_min", "> 0"),
            (sigma_max, "sigma_max", "< 1 (e.g. 0.999)"),
        ):
            if velocity.path.is_singular(end, velocity.prediction_type):
                raise ValueError(
                    f"A model predicting {velocity.prediction_type!r} on {velocity.path!r} carries no information "
                    f"at {name}={end} (its conversion to a velocity divides by zero there): use {name} {advice}."
                )

    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    state = x.detach().to(dtype)
    dims = state[0].numel()
    exact = divergence == "exact" or (divergence == "auto" and dims <= max_exact_dims)
    probes = None if exact else _draw_probes(tuple(state.shape), num_probes, probe, generator, state)
    evaluations = 0

    def derivative(points: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal evaluations
        evaluations += 1
        sigmas = torch.full((points.shape[0],), sigma, device=points.device, dtype=points.dtype)
        v, div = velocity_divergence(velocity, points, sigmas, probes)
        return v.to(dtype), div.to(dtype)

    if method == "adaptive":
        latent, delta = _solve_adaptive(derivative, state, sigma_min, sigma_max, rtol, atol)
    else:
        latent, delta = _solve_fixed(
            derivative, state, likelihood_sigmas(num_steps, sigma_min, sigma_max, rho), method
        )
    prior = standard_normal_log_prob(latent, std=sigma_max)
    return LikelihoodResult(prior + delta, prior, delta, latent, evaluations)


def _solve_fixed(
    derivative: Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RK4 or Heun on the augmented state ``(x, integral of div v)`` over an increasing grid."""
    delta = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    grid = sigmas.tolist()
    for low, high in zip(grid[:-1], grid[1:], strict=True):
        h = high - low
        v1, d1 = derivative(x, low)
        if method == "heun":
            v2, d2 = derivative(x + h * v1, high)
            x, delta = x + h / 2 * (v1 + v2), delta + h / 2 * (d1 + d2)
            continue
        v2, d2 = derivative(x + h / 2 * v1, low + h / 2)
        v3, d3 = derivative(x + h / 2 * v2, low + h / 2)
        v4, d4 = derivative(x + h * v3, high)
        x = x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        delta = delta + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return x, delta


def _solve_adaptive(
    derivative: Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    rtol: float,
    atol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dormand–Prince (scipy ``RK45``) on the flattened augmented state, in float64."""
    from scipy.integrate import solve_ivp

    shape, batch = x.shape, x.shape[0]

    def rhs(sigma: float, flat: np.ndarray) -> np.ndarray:
        points = torch.from_numpy(flat[: x.numel()].reshape(shape)).to(x.device, x.dtype)
        v, div = derivative(points, float(sigma))
        return np.concatenate([v.double().cpu().numpy().ravel(), div.double().cpu().numpy()])

    start = np.concatenate([x.double().cpu().numpy().ravel(), np.zeros(batch)])
    solution = solve_ivp(rhs, (sigma_min, sigma_max), start, method="RK45", rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"The adaptive likelihood solver failed: {solution.message}")
    end = solution.y[:, -1]
    latent = torch.from_numpy(end[: x.numel()].reshape(shape)).to(x.device, x.dtype)
    delta = torch.from_numpy(end[x.numel() :].copy()).to(x.device, x.dtype)
    return latent, delta


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, bin_width: float = BIN_WIDTH_8BIT) -> torch.Tensor:
    """Bits per dimension of quantised data from a continuous log-density of its dequantised version.

    ``bpd = -(log p(x) / D + log(bin_width)) / ln 2``; for 8-bit pixels mapped to ``k / 127.5 - 1``,
    ``bin_width = 2/255`` and the offset is ``+log2(127.5)`` (see the module notes).

    Args:
        log_prob: ``(B,)`` log-densities in nats of the dequantised points.
        num_dims: ``D``, dimensions per sample.
        bin_width: Width of one quantisation bin in the model range.

    Returns:
        ``(B,)`` bits per dimension.
    """
    return -(log_prob / num_dims + math.log(bin_width)) / math.log(2.0)


@dataclass
class BitsPerDimResult:
    """Bits per dimension of a set of 8-bit images.

    Args:
        bits_per_dim: Mean over the images.
        standard_error: Standard error of that mean (over images; includes probe noise for Hutchinson).
        per_image: ``(N,)`` bits per dimension of each image.
        num_function_evals: Velocity evaluations per batch.
    """

    bits_per_dim: float
    standard_error: float
    per_image: torch.Tensor
    num_function_evals: int


def image_bits_per_dim(
    velocity: VelocityFn,
    pixels: torch.Tensor,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    show_progress: bool = True,
    class_labels: torch.Tensor | None = None,
    **solver_options: Any,
) -> BitsPerDimResult:
    """Bits per dimension of 8-bit images: map to [-1, 1], dequantise uniformly, solve, convert.

    Args:
        velocity: ``velocity(x, sigma)``, or a :class:`~flow_pipelines.guidance.GuidedVelocity` (given
            ``class_labels``, each batch is scored with its own labels through a copy of it).
        pixels: uint8 ``(N, C, H, W)`` images at the model's resolution and channels.
        batch_size: Images per solve.
        generator: Random source of the dequantisation noise (drawn on its device) and the probes.
        device: Where to compute (default: the images' device).
        show_progress: Show a progress bar over batches.
        class_labels: ``(N,)`` labels for a conditional likelihood with a ``GuidedVelocity``.
        **solver_options: Passed to :func:`log_likelihood` (``num_steps``, ``method``, ``divergence``, ...).

    Returns:
        The :class:`BitsPerDimResult`.

    Raises:
        ValueError: For non-uint8 pixels, fewer than one image, or labels of the wrong length.
    """
    from ..images import dequantize, pixels_to_model_range

    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[0] == 0:
        raise ValueError(
            f"pixels must be a non-empty uint8 (N, C, H, W) tensor; got {pixels.dtype} {tuple(pixels.shape)}."
        )
    if class_labels is not None and len(class_labels) != len(pixels):
        raise ValueError(f"{len(class_labels)} class labels for {len(pixels)} images.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    device = torch.device(device) if device is not None else pixels.device
    num_dims = pixels[0].numel()
    results, evaluations = [], 0
    starts = range(0, len(pixels), batch_size)
    for start in tqdm(starts, desc="likelihood", disable=not show_progress):
        batch = pixels_to_model_range(pixels[start : start + batch_size].to(device), torch.float64)
        noise_device = generator.device if generator is not None else batch.device
        noisy = dequantize(batch.to(noise_device), generator=generator).to(device)
        batch_velocity = velocity
        if class_labels is not None and isinstance(velocity, GuidedVelocity):
            batch_velocity = velocity.with_labels(class_labels[start : start + batch_size])
        solved = log_likelihood(batch_velocity, noisy, generator=generator, **solver_options)
        results.append(bits_per_dim(solved.log_prob, num_dims).cpu())
        evaluations = max(evaluations, solved.num_function_evals)
    per_image = torch.cat(results)
    count = len(per_image)
    error = float(per_image.std(unbiased=True) / math.sqrt(count)) if count > 1 else float("nan")
    return BitsPerDimResult(float(per_image.mean()), error, per_image, evaluations)
