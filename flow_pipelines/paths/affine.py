"""The affine path abstraction: conversions between predictions and the mapping onto the straight path.

:class:`AffinePath` is ``x_t = a(t) x0 + b(t) noise`` in a model's own time ``t``; everything that converts
between velocity, sample, epsilon and score, and everything that maps our noise level onto a path, is written
here once, for every path. :class:`LinearPath` (the straight path, :data:`STRAIGHT_PATH`) and
the other paths (curved ones, and any path with its time reversed) are in :mod:`flow_pipelines.paths.curved`. See :mod:`flow_pipelines.paths` for the convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

PREDICTION_TYPES: tuple[str, ...] = ("velocity", "sample", "epsilon")
PREDICTION_TYPE_ALIASES: dict[str, str] = {"flow_prediction": "velocity"}
"""Other libraries' names of our prediction types (diffusers' multistep solvers call the velocity so)."""


# Dividing by a coefficient that vanishes at one end of a path (b at the data end for a sample prediction, a at
# the noise end for an epsilon prediction) is meaningless there: the prediction carries no information.
_DIVISION_FLOOR = 1e-6
# |a + b| below this makes x / (a + b) meaningless.
_SCALE_FLOOR = 1e-12
_BISECTION_STEPS = 64
# Noise levels remembered per path: far more than any sampling grid has.
_CACHE_SIZE = 4096

Coefficient = float | torch.Tensor
CoefficientFunction = Callable[[torch.Tensor], torch.Tensor | float]


def check_prediction_type(prediction_type: str) -> str:
    """The canonical name of a prediction type (diffusers' ``"flow_prediction"`` is the velocity).

    Args:
        prediction_type: ``"velocity"``, ``"sample"``, ``"epsilon"`` or an alias of one of them.

    Returns:
        The canonical name.

    Raises:
        ValueError: If the name is neither a prediction type nor an alias of one.
    """
    canonical = PREDICTION_TYPE_ALIASES.get(prediction_type, prediction_type)
    if canonical not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; allowed: {', '.join(PREDICTION_TYPES)} "
            f"(or {', '.join(map(repr, PREDICTION_TYPE_ALIASES))})."
        )
    return canonical


def expand(value: Coefficient, like: torch.Tensor) -> Coefficient:
    """A scalar or per-sample value, ready to multiply a batch.

    Args:
        value: A Python number (returned as it is: no device transfer), a 0-d tensor, or a 1-d tensor with one
            entry per sample.
        like: The batch ``(batch, ...)`` it applies to.

    Returns:
        The number, or a tensor on ``like``'s device and dtype that broadcasts against ``like``.
    """
    if not isinstance(value, torch.Tensor):
        return value
    value = value.to(device=like.device, dtype=like.dtype)
    return value if value.ndim == 0 else value.reshape(value.shape[0], *([1] * (like.ndim - 1)))


def _combine(weight_x: Coefficient, x: torch.Tensor, weight_p: Coefficient, p: torch.Tensor) -> torch.Tensor:
    """``weight_x * x + weight_p * p``, skipping exact zeros and ones so identities stay exact (and cheap)."""
    terms = []
    for weight, tensor in ((weight_x, x), (weight_p, p)):
        if isinstance(weight, torch.Tensor):
            terms.append(expand(weight, tensor) * tensor)
        elif weight == 1.0:
            terms.append(tensor)
        elif weight != 0.0:
            terms.append(weight * tensor)
    if not terms:
        return torch.zeros_like(p)
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _floored(value: Coefficient) -> Coefficient:
    """``value`` with its magnitude raised to at least the division floor, keeping its sign."""
    if not isinstance(value, torch.Tensor):
        return math.copysign(max(abs(value), _DIVISION_FLOOR), value)
    return torch.where(
        value.abs() < _DIVISION_FLOOR, torch.full_like(value, _DIVISION_FLOOR).copysign(value), value
    )


def _as_time(value: float | torch.Tensor) -> torch.Tensor:
    """A time or noise level as a float64 tensor (float32 on devices without float64)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32 if value.device.type == "mps" else torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def _scalar_or_tensor(value: torch.Tensor, scalar: bool) -> Coefficient:
    return float(value) if scalar else value


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


@dataclass(frozen=True)
class Decomposition:
    """The data and noise estimates implied by a prediction, as linear combinations of the point and the prediction.

    ``x0 = x0_from_x * x + x0_from_prediction * p`` and ``noise = noise_from_x * x + noise_from_prediction * p``;
    every field is a number or a per-sample tensor.
    """

    x0_from_x: Coefficient
    x0_from_prediction: Coefficient
    noise_from_x: Coefficient
    noise_from_prediction: Coefficient

    def combined(self, weight_x0: Coefficient, weight_noise: Coefficient) -> tuple[Coefficient, Coefficient]:
        """Weights on ``(x, p)`` of ``weight_x0 * x0 + weight_noise * noise``.

        Args:
            weight_x0: Weight of the data estimate.
            weight_noise: Weight of the noise estimate.

        Returns:
            ``(weight on x, weight on p)``.
        """
        return (
            weight_x0 * self.x0_from_x + weight_noise * self.noise_from_x,
            weight_x0 * self.x0_from_prediction + weight_noise * self.noise_from_prediction,
        )


def _decomposition(
    prediction_type: str, a: Coefficient, b: Coefficient, da: Coefficient, db: Coefficient
) -> Decomposition:
    """Solve ``a x0 + b noise = x`` together with the prediction's own equation, for ``(x0, noise)``."""
    if prediction_type == "sample":  # x0 = p
        return Decomposition(0.0, 1.0, 1.0 / _floored(b), -a / _floored(b))
    if prediction_type == "epsilon":  # noise = p
        return Decomposition(1.0 / _floored(a), -b / _floored(a), 0.0, 1.0)
    determinant = _floored(a * db - b * da)  # velocity: a' x0 + b' noise = p
    return Decomposition(db / determinant, -b / determinant, -da / determinant, a / determinant)


def _target_weights(
    prediction_type: str, da: Coefficient, db: Coefficient
) -> tuple[Coefficient, Coefficient]:
    """Weights on ``(x0, noise)`` of the quantity a prediction type names."""
    if prediction_type == "sample":
        return 1.0, 0.0
    if prediction_type == "epsilon":
        return 0.0, 1.0
    return da, db


class AffinePath:
    """An affine path ``x_t = a(t) x0 + b(t) noise`` in the model's own time ``t`` in [0, 1].

    A subclass gives :meth:`coefficients` and :meth:`derivatives` (and, where a closed form exists,
    :meth:`time_from_sigma`); everything else, training targets, conversions between prediction types and the
    mapping onto the straight path, is defined here once for every path.
    """

    name: str = "affine"
    parameters: tuple[str, ...] = ()
    """Keyword arguments that :func:`get_path` passes on for this path."""
    training_time_range: tuple[float, float] = (0.0, 1.0)
    """Times at which the path's velocity target is finite; training draws are clamped to them."""

    def __init__(self) -> None:
        # Coefficients and points of the numbers met so far: sampling grids revisit the same ones every call.
        self._numbers: dict[float, tuple[float, float, float, float]] = {}
        self._points: dict[tuple[float, float], PathPoint] = {}

    def _values(
        self, time: float | torch.Tensor
    ) -> tuple[Coefficient, Coefficient, Coefficient, Coefficient]:
        """``(a, b, a', b')`` at ``time``: numbers for a number (cached), tensors for one time per sample."""
        if isinstance(time, torch.Tensor) and time.ndim > 0:
            time = _as_time(time)
            return (*self.coefficients(time), *self.derivatives(time))
        key = float(time)
        values = self._numbers.get(key)
        if values is None:
            time = _as_time(key)
            values = tuple(float(value) for value in (*self.coefficients(time), *self.derivatives(time)))
            if len(self._numbers) < _CACHE_SIZE:
                self._numbers[key] = values
        return values

    # ------------------------------------------------------------------------------------ the path itself
    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a(t), b(t))``.

        Args:
            time: Times ``t`` in [0, 1] (a float tensor of any shape).

        Returns:
            Two tensors shaped like ``time``.
        """
        raise NotImplementedError

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a'(t), b'(t))``.

        Args:
            time: Times ``t`` in [0, 1].

        Returns:
            Two tensors shaped like ``time``.
        """
        raise NotImplementedError

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters :func:`get_path` takes to rebuild this path (saved in a model config)."""
        return {}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        return f"{type(self).__name__}({arguments})"

    def sigma_from_time(self, time: float | torch.Tensor) -> torch.Tensor:
        """Our noise level at path time ``t``: ``sigma = b / (a + b)``.

        Args:
            time: Path time(s) in [0, 1].

        Returns:
            ``sigma`` as a float64 tensor (NaN or infinite where ``a + b`` vanishes).
        """
        a, b = self.coefficients(_as_time(time))
        return b / (a + b)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """``(lowest, highest)`` noise level the path reaches; others are evaluated at its ends."""
        ends = self.sigma_from_time(torch.tensor([0.0, 1.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The path time whose noise level is ``sigma``, clamped to the path's ends beyond its range.

        The generic inverse bisects ``sigma(t)``, which must not decrease on [0, 1].

        Args:
            sigma: Our noise level(s).

        Returns:
            ``t`` as a float64 tensor shaped like ``sigma``.
        """
        target = _as_time(sigma)
        low, high = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            below = self.sigma_from_time(middle) < target
            low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        return (low + high) / 2

    # ------------------------------------------------------------------------------------ in the path's terms
    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, time: float | torch.Tensor) -> torch.Tensor:
        """The point ``a(t) x0 + b(t) noise`` of the path.

        Args:
            x0: Clean samples ``(batch, ...)``.
            noise: Gaussian noise of the same shape.
            time: Path time, a number or one per sample.

        Returns:
            ``x_t``, shaped and typed like ``x0``.
        """
        a, b = self.coefficients(_as_time(time))
        return expand(a, x0) * x0 + expand(b, x0) * noise

    def target(
        self, x0: torch.Tensor, noise: torch.Tensor, time: float | torch.Tensor, prediction_type: str
    ) -> torch.Tensor:
        """What a model of ``prediction_type`` should output at time ``t`` for the pair ``(x0, noise)``.

        Args:
            x0: Clean samples.
            noise: The noise paired with them.
            time: Path time, a number or one per sample.
            prediction_type: ``"velocity"`` (``a'(t) x0 + b'(t) noise``), ``"sample"`` (``x0``) or ``"epsilon"``.

        Returns:
            The target, shaped like ``x0``.

        Raises:
            ValueError: For an unknown prediction type.
        """
        prediction_type = check_prediction_type(prediction_type)
        if prediction_type == "sample":
            return x0
        if prediction_type == "epsilon":
            return noise
        da, db = self.derivatives(_as_time(time))
        return expand(da, x0) * x0 + expand(db, x0) * noise

    def decomposition(self, time: float | torch.Tensor, prediction_type: str) -> Decomposition:
        """How a prediction of ``prediction_type`` at time ``t`` splits into data and noise estimates.

        Args:
            time: Path time: a number (the weights are then numbers) or one per sample.
            prediction_type: ``"velocity"``, ``"sample"`` or ``"epsilon"``.

        Returns:
            The :class:`Decomposition`.

        Raises:
            ValueError: For an unknown prediction type.
        """
        return _decomposition(check_prediction_type(prediction_type), *self._values(time))

    def decompose(
        self, prediction: torch.Tensor, sample: torch.Tensor, time: float | torch.Tensor, prediction_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The data and noise estimates ``(x0_hat, noise_hat)`` of a prediction at ``(x_t, t)``.

        Args:
            prediction: The model output, of ``prediction_type``.
            sample: The path point ``x_t`` it was made at.
            time: Path time, a number or one per sample.
            prediction_type: ``"velocity"``, ``"sample"`` or ``"epsilon"``.

        Returns:
            ``(x0_hat, noise_hat)``, shaped like ``sample``.

        Raises:
            ValueError: For an unknown prediction type.
        """
        parts = self.decomposition(time, prediction_type)
        return (
            _combine(parts.x0_from_x, sample, parts.x0_from_prediction, prediction),
            _combine(parts.noise_from_x, sample, parts.noise_from_prediction, prediction),
        )

    def convert(
        self,
        prediction: torch.Tensor,
        sample: torch.Tensor,
        time: float | torch.Tensor,
        from_type: str,
        to_type: str,
    ) -> torch.Tensor:
        """Express a prediction at ``(x_t, t)`` as another prediction type of this path.

        Args:
            prediction: The prediction to convert.
            sample: The path point ``x_t`` it refers to.
            time: Path time, a number or one per sample.
            from_type: The type of ``prediction``.
            to_type: The wanted type.

        Returns:
            The converted prediction (``prediction`` itself when the types agree).

        Raises:
            ValueError: For an unknown prediction type.
        """
        from_type, to_type = check_prediction_type(from_type), check_prediction_type(to_type)
        if from_type == to_type:
            return prediction
        a, b, da, db = self._values(time)
        parts = _decomposition(from_type, a, b, da, db)
        weight_x, weight_p = parts.combined(*_target_weights(to_type, da, db))
        return _combine(weight_x, sample, weight_p, prediction)

    def score(
        self, prediction: torch.Tensor, sample: torch.Tensor, time: float | torch.Tensor, prediction_type: str
    ) -> torch.Tensor:
        """The score ``grad log p_t(x) = -E[noise | x_t] / b(t)`` implied by a prediction (Gaussian noise).

        Args:
            prediction: The prediction at ``(x_t, t)``.
            sample: The path point ``x_t``.
            time: Path time (``b(t) > 0``), a number or one per sample.
            prediction_type: Its type.

        Returns:
            The score, shaped like ``sample``.
        """
        noise = self.convert(prediction, sample, time, prediction_type, "epsilon")
        b = self._values(time)[1]
        return noise * expand(-1.0 / _floored(b), noise)

    # ------------------------------------------------------------------------------------ onto the straight path
    def at_sigma(self, sigma: float | torch.Tensor, num_train_timesteps: int | float = 1000) -> PathPoint:
        """Where our noise level ``sigma`` lies on this path: the model's input, timestep and output map there.

        Args:
            sigma: Our noise level: a number (everything is then a Python number, applied without device
                transfers) or a tensor with one value per sample.
            num_train_timesteps: The model's time scale: it is called with ``t * num_train_timesteps``.

        Returns:
            The :class:`PathPoint`.

        Raises:
            ValueError: If ``a + b`` vanishes at the path time of some ``sigma``.
        """
        scalar = not isinstance(sigma, torch.Tensor) or sigma.ndim == 0
        if scalar and (float(sigma), float(num_train_timesteps)) in self._points:
            return self._points[float(sigma), float(num_train_timesteps)]
        sigma_tensor = _as_time(sigma)
        time = self.time_from_sigma(sigma_tensor)
        (a, b), (da, db) = self.coefficients(time), self.derivatives(time)
        scale = a + b
        bad = ~(scale.abs() > _SCALE_FLOOR)
        if bool(bad.any()):
            index = int(bad.reshape(-1).nonzero()[0])
            raise ValueError(
                f"path {self!r}: a(t) + b(t) = {float(scale.reshape(-1)[index]):.3g} vanishes at "
                f"t={float(time.reshape(-1)[index]):.6g}, where the sampling grid puts "
                f"sigma={float(sigma_tensor.reshape(-1)[index]):.6g}; the mapping x_t = (a + b) * x_sigma needs "
                "a + b != 0 at every noise level sampled."
            )
        values = (sigma_tensor, time, time * num_train_timesteps, scale, a, b, da, db)
        point = PathPoint(*(_scalar_or_tensor(value, scalar) for value in values))
        if scalar and len(self._points) < _CACHE_SIZE:
            self._points[float(sigma), float(num_train_timesteps)] = point
        return point

    def is_singular(self, sigma: float, prediction_type: str) -> bool:
        """Whether a prediction of this type carries no information at our noise level ``sigma``.

        A sample prediction says nothing about the noise where ``b = 0``, an epsilon prediction nothing about
        the data where ``a = 0`` (and a velocity where ``a b' - b a' = 0``): converting it there divides by zero.

        Args:
            sigma: Our noise level.
            prediction_type: The model's prediction type.

        Returns:
            True if the conversion divides by a vanishing coefficient there.
        """
        point = self.at_sigma(float(sigma))
        a, b, da, db = point.a, point.b, point.da, point.db
        divisor = {"sample": b, "epsilon": a, "velocity": a * db - b * da}[
            check_prediction_type(prediction_type)
        ]
        return abs(divisor) < _DIVISION_FLOOR


@dataclass(frozen=True)
class PathPoint:
    """Our noise level ``sigma`` located on a path: the model's input and timestep there, and its output map.

    Every field is a number (for a number ``sigma``) or a per-sample tensor.

    Args:
        sigma: Our noise level.
        time: The path time ``t(sigma)``, clamped to the path's ends.
        timestep: The model's time input ``t * num_train_timesteps``.
        scale: ``c = a(t) + b(t)``: the model sees ``c * x`` for our ``x``.
        a: ``a(t)``.
        b: ``b(t)``.
        da: ``a'(t)``.
        db: ``b'(t)``.
    """

    sigma: Coefficient
    time: Coefficient
    timestep: Coefficient
    scale: Coefficient
    a: Coefficient
    b: Coefficient
    da: Coefficient
    db: Coefficient

    def model_input(self, sample: torch.Tensor) -> torch.Tensor:
        """The model's input ``c * x`` for our point ``x`` at ``sigma`` (``x`` itself on the straight path).

        Args:
            sample: Our ``x_sigma`` ``(batch, ...)``.

        Returns:
            The path point.
        """
        return _combine(self.scale, sample, 0.0, sample)

    def to_straight(
        self,
        prediction: torch.Tensor,
        sample: torch.Tensor,
        prediction_type: str,
        target_type: str = "velocity",
    ) -> torch.Tensor:
        """Turn the model's output at ``model_input(sample)`` into our prediction at ``(sample, sigma)``.

        The output's data and noise estimates are linear in ``(c x, p)``; our velocity is
        ``noise_hat - x0_hat``, our sample ``x0_hat``, our epsilon ``noise_hat``. Each wanted type thus describes
        the same velocity field, also where ``sigma`` lies beyond the path's range.

        Args:
            prediction: The model output.
            sample: Our ``x_sigma`` (not the path point).
            prediction_type: What the model predicts on its path.
            target_type: What the caller expects, in our convention.

        Returns:
            The prediction of ``target_type``, shaped like ``sample``.

        Raises:
            ValueError: For an unknown prediction type.
        """
        parts = _decomposition(check_prediction_type(prediction_type), self.a, self.b, self.da, self.db)
        weight_x, weight_p = parts.combined(*_STRAIGHT_TARGETS[check_prediction_type(target_type)])
        return _combine(weight_x * self.scale, sample, weight_p, prediction)


# Our velocity, sample and epsilon as weights on the (x0, noise) estimates.
_STRAIGHT_TARGETS: dict[str, tuple[float, float]] = {
    "velocity": (-1.0, 1.0),
    "sample": (1.0, 0.0),
    "epsilon": (0.0, 1.0),
}


class LinearPath(AffinePath):
    """The straight path ``a = 1 - t``, ``b = t``: our own convention, on which ``t = sigma`` and the map is the identity."""

    name = "linear"

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 - t, t)``; see :meth:`AffinePath.coefficients`."""
        return 1.0 - time, time

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-1, 1)``; see :meth:`AffinePath.derivatives`."""
        return -torch.ones_like(time), torch.ones_like(time)

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """``t = sigma``; see :meth:`AffinePath.time_from_sigma`."""
        return _as_time(sigma).clamp(0.0, 1.0)


STRAIGHT_PATH = LinearPath()
"""The package's own path: ``x_sigma = (1 - sigma) x0 + sigma noise`` with ``t = sigma``."""
