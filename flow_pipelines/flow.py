"""The flow-matching path: the one place that knows how data, noise and time relate.

Convention (shared with diffusers' ``FlowMatch*`` schedulers)::

    x_sigma = (1 - sigma) * x0 + sigma * noise,   sigma in [0, 1], sigma = 1 is pure noise
    timestep = sigma * num_train_timesteps
    velocity = dx_sigma / dsigma = noise - x0

Given a point ``x`` at noise level ``sigma``, any one of velocity, sample (``x0``) and epsilon
(``noise``) determines the others::

    x0 = x - sigma * v        noise = x + (1 - sigma) * v        score = -noise / sigma

Schedulers, the training objective and the likelihood all go through these functions.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES: tuple[str, ...] = ("velocity", "sample", "epsilon")

# Converting from a sample prediction divides by sigma, from an epsilon prediction by 1 - sigma;
# both are singular at one end of the path, where that prediction carries no information.
_DIVISION_FLOOR = 1e-6


def check_prediction_type(prediction_type: str) -> str:
    """Validate a prediction type name.

    Args:
        prediction_type: One of ``"velocity"``, ``"sample"`` or ``"epsilon"``.

    Returns:
        The same name, for chaining.

    Raises:
        ValueError: If the name is not one of the allowed prediction types.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; allowed: {', '.join(PREDICTION_TYPES)}."
        )
    return prediction_type


def expand_sigma(sigma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a noise level (a scalar or one value per sample) against a batch.

    Args:
        sigma: A Python number, a 0-d tensor, or a 1-d tensor with one entry per sample.
        like: The batch tensor ``(batch, ...)`` the noise level applies to.

    Returns:
        A tensor on ``like``'s device and dtype that broadcasts against ``like``.
    """
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[0], *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Point on the path between data and noise: ``(1 - sigma) * x0 + sigma * noise``.

    Args:
        x0: Clean samples.
        noise: Gaussian noise of the same shape.
        sigma: Noise level in [0, 1], a scalar or one per sample.

    Returns:
        ``x_sigma``, shaped like ``x0``.
    """
    sigma = expand_sigma(sigma, x0)
    return (1.0 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The conditional velocity ``noise - x0`` of the straight path.

    Args:
        x0: Clean samples.
        noise: The noise paired with them.

    Returns:
        ``noise - x0``.
    """
    return noise - x0


def to_velocity(
    prediction: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Convert a model prediction at ``(sample, sigma)`` to a velocity.

    Args:
        prediction: The model output.
        sample: The point ``x_sigma`` the model was evaluated at.
        sigma: Its noise level, a scalar or one per sample.
        prediction_type: What ``prediction`` is: ``"velocity"``, ``"sample"`` or ``"epsilon"``.

    Returns:
        The velocity ``noise - x0`` implied by the prediction.

    Raises:
        ValueError: For an unknown prediction type.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "velocity":
        return prediction
    sigma = expand_sigma(sigma, sample)
    if prediction_type == "sample":
        return (sample - prediction) / sigma.clamp(min=_DIVISION_FLOOR)
    return (prediction - sample) / (1.0 - sigma).clamp(min=_DIVISION_FLOOR)


def from_velocity(
    velocity: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Express a velocity at ``(sample, sigma)`` as another prediction type.

    Args:
        velocity: The velocity ``noise - x0``.
        sample: The point ``x_sigma``.
        sigma: Its noise level, a scalar or one per sample.
        prediction_type: The wanted type: ``"velocity"``, ``"sample"`` or ``"epsilon"``.

    Returns:
        The prediction of the wanted type.

    Raises:
        ValueError: For an unknown prediction type.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "velocity":
        return velocity
    sigma = expand_sigma(sigma, sample)
    if prediction_type == "sample":
        return sample - sigma * velocity
    return sample + (1.0 - sigma) * velocity


def convert_prediction(
    prediction: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    from_type: str,
    to_type: str,
) -> torch.Tensor:
    """Convert a prediction between ``velocity``, ``sample`` and ``epsilon``.

    Args:
        prediction: The prediction to convert.
        sample: The point ``x_sigma`` it refers to.
        sigma: Its noise level, a scalar or one per sample.
        from_type: The type of ``prediction``.
        to_type: The wanted type.

    Returns:
        The converted prediction (``prediction`` itself when the types agree).

    Raises:
        ValueError: For an unknown prediction type.
    """
    check_prediction_type(from_type)
    check_prediction_type(to_type)
    if from_type == to_type:
        return prediction
    return from_velocity(to_velocity(prediction, sample, sigma, from_type), sample, sigma, to_type)


def score_from_velocity(
    velocity: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor
) -> torch.Tensor:
    """The score ``grad log p_sigma(x) = -E[noise | x] / sigma`` implied by a velocity.

    Args:
        velocity: The velocity at ``(sample, sigma)``.
        sample: The point ``x_sigma``.
        sigma: Its noise level (must be > 0), a scalar or one per sample.

    Returns:
        The score, shaped like ``sample``.
    """
    noise = from_velocity(velocity, sample, sigma, "epsilon")
    return -noise / expand_sigma(sigma, sample).clamp(min=_DIVISION_FLOOR)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift ``shift * s / (1 + (shift - 1) * s)``; it keeps 0 and 1 fixed.

    Args:
        sigmas: Noise levels in [0, 1].
        shift: The shift; 1 is the identity, > 1 spends more steps at high noise.

    Returns:
        The shifted noise levels.
    """
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sigma_to_timestep(sigma: float | torch.Tensor, num_train_timesteps: int = 1000) -> float | torch.Tensor:
    """The model's time input for a noise level: ``sigma * num_train_timesteps``.

    Args:
        sigma: Noise level(s) in [0, 1].
        num_train_timesteps: The training time scale.

    Returns:
        The timestep(s), as floats.
    """
    return sigma * num_train_timesteps


def timestep_to_sigma(
    timestep: float | torch.Tensor, num_train_timesteps: int = 1000
) -> float | torch.Tensor:
    """The noise level of a model time input: ``timestep / num_train_timesteps``.

    Args:
        timestep: Timestep(s) in [0, num_train_timesteps].
        num_train_timesteps: The training time scale.

    Returns:
        The noise level(s).
    """
    return timestep / num_train_timesteps
