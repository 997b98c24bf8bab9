"""Affine noising paths and their mapping onto the package's straight path.

A model may be trained on any affine path between data and noise,

    x_s = a(s) * x0 + b(s) * noise,   s in [0, 1], s = 0 data, s = 1 (about) noise,

called with ``timestep = s * num_train_timesteps`` and predicting the path's velocity
``dx_s/ds = a'(s) x0 + b'(s) noise``, the sample ``x0`` or the noise. Every such path is a change of
time and scale of the straight path of :mod:`flow_pipelines.flow`: with ``c = a + b``,

    x_s / c = (1 - sigma) x0 + sigma noise,   sigma = b / (a + b),

so a point ``x`` at our noise level ``sigma`` is the point ``c * x`` at path time ``s(sigma)``. A path
model therefore samples with every flow scheduler through one mapping (:meth:`FlowPath.mapping`): feed
it ``c * x`` at ``s * num_train_timesteps``, split its output into the data and noise estimates it
implies (a 2 x 2 linear solve), and hand the scheduler our velocity ``noise_hat - x0_hat`` (or the
prediction type it asks for, converted by :mod:`flow_pipelines.flow`).

Paths (:func:`get_path`): ``"linear"`` (ours: ``a = 1 - s, b = s``; the mapping is the identity),
``"cosine"`` (GVP: ``a = cos(pi s / 2), b = sin(pi s / 2)``), ``"vp"`` (variance preserving:
``a = sqrt(abar), b = sqrt(1 - abar)``, ``abar(s) = exp(-beta_min s - (beta_max - beta_min) s^2 / 2)``;
the defaults 0.1 and 20 are DDPM's linear betas 1e-4 … 0.02 over 1000 steps at ``t = s * 1000``), and
:class:`AffinePath` for any user-given ``a`` and ``b``.

The VP path never reaches pure noise: its largest noise level is ``sigma(1) = b(1) / (a(1) + b(1))``
(0.99347 for the defaults). Noise levels above it, where every sampling grid starts, are evaluated at
``s = 1``: the model sees ``c(1) * x`` as the most noisy input it knows. The same clamping applies at
either end of any path whose noise levels do not span [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import flow

PATH_NAMES: tuple[str, ...] = ("linear", "cosine", "vp")

# The same floor as flow.py: a division by a coefficient that vanishes at one end of the path (b at
# s = 0 for a sample prediction, a at s = 1 for an epsilon prediction) carries no information there.
_DIVISION_FLOOR = 1e-6
# |a + b| below this makes x / (a + b) meaningless.
_SCALE_FLOOR = 1e-12
_BISECTION_STEPS = 64
_CHECK_GRID_POINTS = 1025

CoefficientFunction = Callable[[torch.Tensor], torch.Tensor | float]


def _as_time(value: float | torch.Tensor) -> torch.Tensor:
    """A path time or noise level as a float64 tensor (float32 on devices without float64)."""
    if isinstance(value, torch.Tensor):
        dtype = torch.float32 if value.device.type == "mps" else torch.float64
        return value.detach().to(dtype)
    return torch.as_tensor(value, dtype=torch.float64)


Coefficient = float | torch.Tensor


def _floored(value: Coefficient) -> Coefficient:
    """``value`` with its magnitude raised to at least the division floor, keeping its sign."""
    if not isinstance(value, torch.Tensor):
        return math.copysign(max(abs(value), _DIVISION_FLOOR), value)
    floor = torch.full_like(value, _DIVISION_FLOOR)
    return torch.where(value.abs() < _DIVISION_FLOOR, floor.copysign(value), value)


def _against(value: Coefficient, like: torch.Tensor) -> Coefficient:
    """A coefficient ready to multiply ``like``: a Python number as it is (no device transfer), a tensor
    broadcast per sample."""
    return flow.expand_sigma(value, like) if isinstance(value, torch.Tensor) else value


def _split(
    prediction: torch.Tensor,
    sample: torch.Tensor,
    prediction_type: str,
    a: Coefficient,
    b: Coefficient,
    da: Coefficient,
    db: Coefficient,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``a x0 + b noise = sample`` with the prediction's equation for ``(x0, noise)``."""
    flow.check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return prediction, (sample - _against(a, sample) * prediction) / _against(_floored(b), sample)
    if prediction_type == "epsilon":
        return (sample - _against(b, sample) * prediction) / _against(_floored(a), sample), prediction
    determinant = _against(_floored(a * db - b * da), sample)
    a, b, da, db = (_against(value, sample) for value in (a, b, da, db))
    return (db * sample - b * prediction) / determinant, (a * prediction - da * sample) / determinant


class FlowPath:
    """An affine path ``x_s = a(s) x0 + b(s) noise`` and its mapping onto the straight path.

    Subclasses give :meth:`coefficients` and :meth:`derivatives`; :meth:`time_from_sigma` defaults to a
    bisection on ``sigma(s) = b / (a + b)`` and is overridden where a closed form exists.
    """

    name: str = "affine"
    parameters: tuple[str, ...] = ()
    """Keyword arguments that :func:`get_path` passes on for this path."""

    # ------------------------------------------------------------------ the path itself
    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a(s), b(s))``.

        Args:
            time: Path times ``s`` in [0, 1] (a float tensor of any shape).

        Returns:
            Two tensors shaped like ``time``.
        """
        raise NotImplementedError

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a'(s), b'(s))``.

        Args:
            time: Path times ``s`` in [0, 1].

        Returns:
            Two tensors shaped like ``time``.
        """
        raise NotImplementedError

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters that :func:`get_path` takes to rebuild this path (saved in a model config)."""
        return {}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        return f"{type(self).__name__}({arguments})"

    def scale(self, time: float | torch.Tensor) -> torch.Tensor:
        """``c(s) = a(s) + b(s)``: the factor between the straight path and this one.

        Args:
            time: Path time(s).

        Returns:
            ``a + b`` as a float64 tensor.
        """
        a, b = self.coefficients(_as_time(time))
        return a + b

    def sigma_from_time(self, time: float | torch.Tensor) -> torch.Tensor:
        """Our noise level of path time ``s``: ``sigma = b / (a + b)``.

        Args:
            time: Path time(s) in [0, 1].

        Returns:
            ``sigma`` as a float64 tensor (NaN or infinite where ``a + b`` vanishes).
        """
        a, b = self.coefficients(_as_time(time))
        return b / (a + b)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """``(sigma(0), sigma(1))``: the noise levels the path spans; others are clamped to its ends."""
        ends = self.sigma_from_time(torch.tensor([0.0, 1.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The path time ``s`` whose noise level is ``sigma``, clamped to [0, 1] beyond the path's range.

        The generic inverse bisects ``sigma(s)``, which must not decrease on [0, 1].

        Args:
            sigma: Our noise level(s).

        Returns:
            ``s`` as a float64 tensor shaped like ``sigma``.
        """
        target = _as_time(sigma)
        low = torch.zeros_like(target)
        high = torch.ones_like(target)
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            below = self.sigma_from_time(middle) < target
            low = torch.where(below, middle, low)
            high = torch.where(below, high, middle)
        return (low + high) / 2

    def timestep(self, time: float | torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
        """The model's time input at path time ``s``: ``s * num_train_timesteps``.

        Args:
            time: Path time(s).
            num_train_timesteps: The model's time scale.

        Returns:
            The timestep(s), float64.
        """
        return _as_time(time) * num_train_timesteps

    # ------------------------------------------------------------------ training
    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, time: float | torch.Tensor) -> torch.Tensor:
        """The point ``a(s) x0 + b(s) noise`` of the path.

        Args:
            x0: Clean samples ``(batch, ...)``.
            noise: Gaussian noise of the same shape.
            time: Path time, a scalar or one per sample.

        Returns:
            ``x_s``, shaped and typed like ``x0``.
        """
        a, b = self.coefficients(_as_time(time))
        return flow.expand_sigma(a, x0) * x0 + flow.expand_sigma(b, x0) * noise

    def target(
        self, x0: torch.Tensor, noise: torch.Tensor, time: float | torch.Tensor, prediction_type: str
    ) -> torch.Tensor:
        """The regression target of a prediction type on this path, for a pair ``(x0, noise)``.

        Args:
            x0: Clean samples.
            noise: The noise paired with them.
            time: Path time, a scalar or one per sample.
            prediction_type: ``"velocity"`` (``a'(s) x0 + b'(s) noise``), ``"sample"`` (``x0``) or
                ``"epsilon"`` (``noise``).

        Returns:
            The target, shaped like ``x0``.

        Raises:
            ValueError: For an unknown prediction type.
        """
        flow.check_prediction_type(prediction_type)
        if prediction_type == "sample":
            return x0
        if prediction_type == "epsilon":
            return noise
        da, db = self.derivatives(_as_time(time))
        return flow.expand_sigma(da, x0) * x0 + flow.expand_sigma(db, x0) * noise

    def split_prediction(
        self,
        prediction: torch.Tensor,
        sample: torch.Tensor,
        time: float | torch.Tensor,
        prediction_type: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The data and noise estimates ``(x0_hat, noise_hat)`` implied by a path prediction.

        Solves ``a x0 + b noise = sample`` together with the prediction's own equation
        (``x0 = p``, ``noise = p`` or ``a' x0 + b' noise = p``).

        Args:
            prediction: The model output of ``prediction_type`` at ``(sample, s)``.
            sample: The path point ``x_s``.
            time: Path time ``s``, a scalar or one per sample.
            prediction_type: ``"velocity"``, ``"sample"`` or ``"epsilon"``.

        Returns:
            ``(x0_hat, noise_hat)``, shaped like ``sample``.

        Raises:
            ValueError: For an unknown prediction type.
        """
        time = _as_time(time)
        a, b = self.coefficients(time)
        da, db = self.derivatives(time)
        return _split(prediction, sample, prediction_type, a, b, da, db)

    def convert_prediction(
        self,
        prediction: torch.Tensor,
        sample: torch.Tensor,
        time: float | torch.Tensor,
        from_type: str,
        to_type: str,
    ) -> torch.Tensor:
        """Convert a prediction between ``velocity``, ``sample`` and ``epsilon`` in this path's own terms.

        Args:
            prediction: The prediction to convert.
            sample: The path point ``x_s`` it refers to.
            time: Path time ``s``, a scalar or one per sample.
            from_type: The type of ``prediction``.
            to_type: The wanted type.

        Returns:
            The converted prediction (``prediction`` itself when the types agree).

        Raises:
            ValueError: For an unknown prediction type.
        """
        flow.check_prediction_type(from_type)
        flow.check_prediction_type(to_type)
        if from_type == to_type:
            return prediction
        x0, noise = self.split_prediction(prediction, sample, time, from_type)
        return self.target(x0, noise, time, to_type)

    # ------------------------------------------------------------------ the mapping
    def mapping(self, sigma: float | torch.Tensor, num_train_timesteps: int = 1000) -> PathMapping:
        """Where our noise level ``sigma`` lies on this path, with what a sampler needs to call the model.

        Args:
            sigma: Our noise level: a number (the coefficients are then plain floats, applied without
                any device transfer), or a tensor, one value per sample.
            num_train_timesteps: The model's time scale: it is called with ``s * num_train_timesteps``.

        Returns:
            The :class:`PathMapping`.

        Raises:
            ValueError: If ``a + b`` vanishes at the path time of some ``sigma``.
        """
        scalar = not isinstance(sigma, torch.Tensor) or sigma.ndim == 0
        sigma_tensor = _as_time(sigma)
        time = self.time_from_sigma(sigma_tensor)
        a, b = self.coefficients(time)
        da, db = self.derivatives(time)
        scale = a + b
        bad = ~(scale.abs() > _SCALE_FLOOR)
        if bool(bad.any()):
            index = int(bad.reshape(-1).nonzero()[0])
            raise ValueError(
                f"path {self!r}: a(s) + b(s) = {float(scale.reshape(-1)[index]):.3g} vanishes at "
                f"s={float(time.reshape(-1)[index]):.6g} (a={float(a.reshape(-1)[index]):.3g}, "
                f"b={float(b.reshape(-1)[index]):.3g}), where the sampling grid puts "
                f"sigma={float(sigma_tensor.reshape(-1)[index]):.6g}; the mapping x_s = (a + b) * x_sigma "
                "needs a + b != 0 at every noise level sampled."
            )
        values = {
            "sigma": sigma_tensor,
            "time": time,
            "timestep": self.timestep(time, num_train_timesteps),
            "scale": scale,
            "a": a,
            "b": b,
            "da": da,
            "db": db,
        }
        if scalar:
            values = {key: float(value) for key, value in values.items()}
        return PathMapping(path=self, **values)


@dataclass(frozen=True)
class PathMapping:
    """A noise level ``sigma`` of ours located on a path: model input, timestep and output conversion.

    Args:
        path: The path.
        sigma: Our noise level (a float, or a tensor with one value per sample).
        time: The path time ``s(sigma)``, clamped to [0, 1].
        timestep: The model's time input ``s * num_train_timesteps``.
        scale: ``c = a(s) + b(s)``.
        a: ``a(s)``.
        b: ``b(s)``.
        da: ``a'(s)``.
        db: ``b'(s)``.
    """

    path: FlowPath
    sigma: float | torch.Tensor
    time: float | torch.Tensor
    timestep: float | torch.Tensor
    scale: float | torch.Tensor
    a: float | torch.Tensor
    b: float | torch.Tensor
    da: float | torch.Tensor
    db: float | torch.Tensor

    @property
    def is_identity(self) -> bool:
        """True for the linear path, whose model speaks our convention already."""
        return isinstance(self.path, LinearPath)

    def model_input(self, sample: torch.Tensor) -> torch.Tensor:
        """The model input ``c * x`` for our point ``x`` at ``sigma``.

        Args:
            sample: Our ``x_sigma`` ``(batch, ...)``.

        Returns:
            The path point (``sample`` itself on the linear path).
        """
        if self.is_identity:
            return sample
        return _against(self.scale, sample) * sample

    def to_flow(
        self,
        prediction: torch.Tensor,
        sample: torch.Tensor,
        prediction_type: str,
        target_type: str = "velocity",
    ) -> torch.Tensor:
        """Turn the path model's output at ``model_input(sample)`` into our prediction at ``(sample, sigma)``.

        The output is split into ``(x0_hat, noise_hat)`` (:meth:`FlowPath.split_prediction`), our velocity
        is ``noise_hat - x0_hat``, and :func:`flow.from_velocity` gives the wanted type. Every wanted type
        thus describes the same velocity field, also where ``sigma`` lies beyond the path's range.

        Args:
            prediction: The model output.
            sample: Our ``x_sigma`` (not the path point).
            prediction_type: What the model predicts on its path.
            target_type: What the caller (a scheduler) expects, in our convention.

        Returns:
            The prediction of ``target_type``, shaped like ``sample``.

        Raises:
            ValueError: For an unknown prediction type.
        """
        if self.is_identity:
            return flow.convert_prediction(prediction, sample, self.sigma, prediction_type, target_type)
        flow.check_prediction_type(target_type)
        x0, noise = _split(
            prediction, self.model_input(sample), prediction_type, self.a, self.b, self.da, self.db
        )
        velocity = flow.velocity_target(x0, noise)
        return flow.from_velocity(velocity, sample, self.sigma, target_type)

    def from_flow(
        self,
        prediction: torch.Tensor,
        sample: torch.Tensor,
        prediction_type: str,
        target_type: str,
    ) -> torch.Tensor:
        """The inverse of :meth:`to_flow`: our prediction at ``(sample, sigma)`` as the path model's output.

        Args:
            prediction: Our prediction of ``prediction_type`` at ``(sample, sigma)``.
            sample: Our ``x_sigma``.
            prediction_type: Its type in our convention.
            target_type: The path prediction type wanted.

        Returns:
            What a path model of ``target_type`` outputs at ``model_input(sample)``.

        Raises:
            ValueError: For an unknown prediction type.
        """
        if self.is_identity:
            return flow.convert_prediction(prediction, sample, self.sigma, prediction_type, target_type)
        x0 = flow.convert_prediction(prediction, sample, self.sigma, prediction_type, "sample")
        noise = flow.convert_prediction(prediction, sample, self.sigma, prediction_type, "epsilon")
        return self.path.target(x0, noise, self.time, target_type)


class LinearPath(FlowPath):
    """The straight path ``a = 1 - s``, ``b = s`` of :mod:`flow_pipelines.flow`; its mapping is the identity."""

    name = "linear"

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 - s, s)``; see :meth:`FlowPath.coefficients`."""
        return 1.0 - time, time

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-1, 1)``; see :meth:`FlowPath.derivatives`."""
        return -torch.ones_like(time), torch.ones_like(time)

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """``s = sigma``; see :meth:`FlowPath.time_from_sigma`."""
        return _as_time(sigma).clamp(0.0, 1.0)

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, time: float | torch.Tensor) -> torch.Tensor:
        """:func:`flow.interpolate`; see :meth:`FlowPath.interpolate`."""
        return flow.interpolate(x0, noise, time)

    def target(
        self, x0: torch.Tensor, noise: torch.Tensor, time: float | torch.Tensor, prediction_type: str
    ) -> torch.Tensor:
        """The velocity is :func:`flow.velocity_target`; see :meth:`FlowPath.target`."""
        if flow.check_prediction_type(prediction_type) == "velocity":
            return flow.velocity_target(x0, noise)
        return super().target(x0, noise, time, prediction_type)

    def convert_prediction(
        self,
        prediction: torch.Tensor,
        sample: torch.Tensor,
        time: float | torch.Tensor,
        from_type: str,
        to_type: str,
    ) -> torch.Tensor:
        """:func:`flow.convert_prediction`; see :meth:`FlowPath.convert_prediction`."""
        return flow.convert_prediction(prediction, sample, time, from_type, to_type)


class CosinePath(FlowPath):
    """The cosine (GVP) path ``a = cos(pi s / 2)``, ``b = sin(pi s / 2)``; ``s(sigma) = (2 / pi) atan2(sigma, 1 - sigma)``."""

    name = "cosine"

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`FlowPath.coefficients`."""
        angle = 0.5 * math.pi * time
        return torch.cos(angle), torch.sin(angle)

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`FlowPath.derivatives`."""
        angle = 0.5 * math.pi * time
        return -0.5 * math.pi * torch.sin(angle), 0.5 * math.pi * torch.cos(angle)

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Closed form; see :meth:`FlowPath.time_from_sigma`."""
        sigma = _as_time(sigma).clamp(0.0, 1.0)
        return (torch.atan2(sigma, 1.0 - sigma) * (2.0 / math.pi)).clamp(0.0, 1.0)


class VPPath(FlowPath):
    """The variance-preserving path ``a = sqrt(abar)``, ``b = sqrt(1 - abar)`` of the VP SDE.

    ``abar(s) = exp(-L(s))`` with ``L(s) = beta_min s + (beta_max - beta_min) s^2 / 2``. The defaults
    match DDPM's linear betas ``1e-4 … 0.02`` over 1000 steps (``beta_i ~ beta(i / 1000) / 1000``) at
    ``t = s * 1000``; :meth:`from_ddpm_betas` derives them for other schedules. The inverse is the
    positive root of the quadratic ``L(s) = log(1 + (sigma / (1 - sigma))^2)``. The path ends short of
    pure noise, at ``sigma(1) < 1``; larger noise levels map to ``s = 1``.

    Args:
        beta_min: ``beta(0)`` (>= 0).
        beta_max: ``beta(1)`` (> 0).

    Raises:
        ValueError: For a negative ``beta_min``, a non-positive ``beta_max`` or non-finite values.
    """

    name = "vp"
    parameters = ("beta_min", "beta_max")

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        for label, value in (("beta_min", beta_min), ("beta_max", beta_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{label}={value!r} must be a finite number.")
        if beta_min < 0 or beta_max <= 0:
            raise ValueError(
                f"VP path needs beta_min >= 0 and beta_max > 0; got beta_min={beta_min}, beta_max={beta_max}."
            )
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    @classmethod
    def from_ddpm_betas(
        cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000
    ) -> VPPath:
        """The VP path of DDPM's linear beta schedule (``beta_min = beta_start * N``, ``beta_max = beta_end * N``).

        Args:
            beta_start: DDPM's first beta.
            beta_end: DDPM's last beta.
            num_train_timesteps: DDPM's number of steps ``N``.

        Returns:
            The path.
        """
        return cls(beta_start * num_train_timesteps, beta_end * num_train_timesteps)

    @property
    def kwargs(self) -> dict[str, Any]:
        """``{"beta_min": ..., "beta_max": ...}``."""
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def _exponent(self, time: torch.Tensor) -> torch.Tensor:
        """``L(s) = -log abar(s)``."""
        return self.beta_min * time + 0.5 * (self.beta_max - self.beta_min) * time**2

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`FlowPath.coefficients`."""
        exponent = self._exponent(time)
        return torch.exp(-0.5 * exponent), torch.sqrt(-torch.expm1(-exponent))

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`FlowPath.derivatives`; ``b'`` is infinite at ``s = 0`` (``b ~ sqrt(beta_min s)``)."""
        a, b = self.coefficients(time)
        beta = self.beta_min + (self.beta_max - self.beta_min) * time
        return -0.5 * beta * a, 0.5 * beta * a * a / b

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Closed form, clamped to ``s = 1`` beyond ``sigma(1)``; see :meth:`FlowPath.time_from_sigma`."""
        sigma = _as_time(sigma).clamp(0.0, 1.0)
        inside = sigma < self.sigma_range[1]
        # Beyond the path's range the formula would divide by 1 - sigma = 0 or exceed s = 1.
        safe = torch.where(inside, sigma, torch.zeros_like(sigma))
        exponent = torch.log1p((safe / (1.0 - safe)) ** 2)
        # The positive root of (beta_max - beta_min) s^2 / 2 + beta_min s - L = 0, written without a
        # cancelling difference (and valid for beta_max = beta_min).
        root = torch.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * exponent)
        denominator = self.beta_min + root
        time = torch.where(
            denominator > 0, 2.0 * exponent / denominator.clamp(min=1e-300), torch.zeros_like(safe)
        )
        return torch.where(inside, time.clamp(0.0, 1.0), torch.ones_like(time))


class AffinePath(FlowPath):
    """Any affine path from user callables ``a(s)``, ``b(s)`` (and optionally their derivatives).

    The callables take a float64 tensor of times and return a tensor (or number) broadcastable to it;
    derivatives default to autograd through them. ``s(sigma)`` is found by bisection, so ``sigma(s) =
    b / (a + b)`` must not decrease on [0, 1] (checked on a grid here). A path that cannot be saved by name
    (it holds functions) is for training scripts and hand-written samplers; a saved model names one of
    :data:`PATH_NAMES`.

    Args:
        a: The data coefficient ``a(s)``.
        b: The noise coefficient ``b(s)``.
        da: Optional ``a'(s)``.
        db: Optional ``b'(s)``.

    Raises:
        ValueError: If an argument is not callable, a coefficient is not finite on [0, 1], or
            ``b / (a + b)`` decreases somewhere on [0, 1].
    """

    name = "affine"

    def __init__(
        self,
        a: CoefficientFunction,
        b: CoefficientFunction,
        da: CoefficientFunction | None = None,
        db: CoefficientFunction | None = None,
    ) -> None:
        for label, function in (("a", a), ("b", b), ("da", da), ("db", db)):
            if function is not None and not callable(function):
                raise ValueError(f"{label}={function!r} must be a callable of the path time s.")
        self._a, self._b, self._da, self._db = a, b, da, db
        grid = torch.linspace(0.0, 1.0, _CHECK_GRID_POINTS, dtype=torch.float64)
        a_grid, b_grid = self.coefficients(grid)
        for label, values in (("a", a_grid), ("b", b_grid)):
            if not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).nonzero()[0])
                raise ValueError(
                    f"{label}(s) is not finite at s={float(grid[bad]):.6g}: {float(values[bad])}."
                )
        scale = a_grid + b_grid
        defined = scale.abs() > _SCALE_FLOOR
        sigma = (b_grid / scale)[defined]
        times = grid[defined]
        drops = (sigma[1:] - sigma[:-1] < -1e-9).nonzero()
        if len(drops):
            index = int(drops[0])
            raise ValueError(
                f"sigma(s) = b / (a + b) decreases from {float(sigma[index]):.6g} at s={float(times[index]):.6g} "
                f"to {float(sigma[index + 1]):.6g} at s={float(times[index + 1]):.6g}; the mapping onto "
                "the straight path needs it non-decreasing on [0, 1] (noise growing with s)."
            )

    @staticmethod
    def _evaluate(function: CoefficientFunction, time: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(function(time), dtype=time.dtype, device=time.device)
        return torch.broadcast_to(value, time.shape)

    @staticmethod
    def _differentiate(function: CoefficientFunction, time: torch.Tensor) -> torch.Tensor:
        """Elementwise derivative by autograd (the coefficient functions act elementwise)."""
        with torch.enable_grad():
            leaf = time.detach().clone().requires_grad_(True)
            value = AffinePath._evaluate(function, leaf)
            if not value.requires_grad:  # a constant coefficient
                return torch.zeros_like(time)
            (gradient,) = torch.autograd.grad(value.sum(), leaf)
        return gradient

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`FlowPath.coefficients`."""
        return self._evaluate(self._a, time), self._evaluate(self._b, time)

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The given derivatives, else autograd; see :meth:`FlowPath.derivatives`."""
        da = self._evaluate(self._da, time) if self._da is not None else self._differentiate(self._a, time)
        db = self._evaluate(self._db, time) if self._db is not None else self._differentiate(self._b, time)
        return da, db


_PATHS: dict[str, type[FlowPath]] = {"linear": LinearPath, "cosine": CosinePath, "vp": VPPath}


def get_path(name: str, **kwargs: Any) -> FlowPath:
    """Build a named path.

    Args:
        name: ``"linear"``, ``"cosine"`` or ``"vp"``.
        **kwargs: The path's parameters (``beta_min``, ``beta_max`` for ``"vp"``; none for the others).

    Returns:
        The path.

    Raises:
        ValueError: For an unknown name (the message lists the known ones) or parameters the path does
            not take.
    """
    if not isinstance(name, str) or name not in _PATHS:
        raise ValueError(f"Unknown path {name!r}; known paths: {', '.join(PATH_NAMES)}.")
    path_class = _PATHS[name]
    allowed = path_class.parameters
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"path {name!r} does not take {unknown}; allowed parameters: {', '.join(allowed) or 'none'}."
        )
    return path_class(**kwargs)


def path_from_config(config: Mapping[str, Any] | Any) -> FlowPath:
    """The path a model was trained on, from its config (``path`` and ``path_kwargs``; linear if absent).

    Args:
        config: A model config (a ``FrozenDict`` / mapping, or an object with attributes).

    Returns:
        The path.

    Raises:
        ValueError: For an unknown path name or parameters, or a DDPM-convention model
            (``time_convention="ddpm"``) that claims the linear path: DDPM models lie on the VP path.
    """

    def read(key: str, default: Any) -> Any:
        if isinstance(config, Mapping):
            return config.get(key, default)
        return getattr(config, key, default)

    name = read("path", None) or "linear"
    path = get_path(name, **(read("path_kwargs", None) or {}))
    if read("time_convention", "flow") == "ddpm" and name == "linear":
        raise ValueError(
            "The model has time_convention='ddpm' (a DDPM model, on the variance-preserving path) but "
            "path='linear'; set path='vp' (with path_kwargs beta_min / beta_max of its beta schedule, "
            "0.1 and 20 for DDPM's linear betas) in its config."
        )
    return path
