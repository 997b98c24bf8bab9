"""The other paths: cosine (GVP), variance-preserving (VP), user-given coefficients, and time running backwards."""

from __future__ import annotations

import math
from typing import Any

import torch

from .affine import _SCALE_FLOOR, AffinePath, CoefficientFunction, _as_time

# Where a user-given path is checked to be finite and monotone.
_CHECK_GRID_POINTS = 1025


class CosinePath(AffinePath):
    """The cosine (GVP) path ``a = cos(pi t / 2)``, ``b = sin(pi t / 2)``; ``t(sigma) = (2 / pi) atan2(sigma, 1 - sigma)``."""

    name = "cosine"

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`AffinePath.coefficients`."""
        angle = 0.5 * math.pi * time
        return torch.cos(angle), torch.sin(angle)

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`AffinePath.derivatives`."""
        angle = 0.5 * math.pi * time
        return -0.5 * math.pi * torch.sin(angle), 0.5 * math.pi * torch.cos(angle)

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Closed form; see :meth:`AffinePath.time_from_sigma`."""
        sigma = _as_time(sigma).clamp(0.0, 1.0)
        return (torch.atan2(sigma, 1.0 - sigma) * (2.0 / math.pi)).clamp(0.0, 1.0)


def _check_finite_number(label: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{label}={value!r} must be a finite number.")


class VPPath(AffinePath):
    """The variance-preserving path ``a = sqrt(abar)``, ``b = sqrt(1 - abar)`` of the VP SDE.

    ``abar(t) = exp(-L(t))`` with ``L(t) = beta_min t + (beta_max - beta_min) t^2 / 2``. The defaults match
    DDPM's linear betas ``1e-4 … 0.02`` over 1000 steps at ``timestep = t * 1000``; :meth:`from_ddpm_betas`
    derives them for other schedules. The inverse is the positive root of ``L(t) = log(1 + (sigma / (1 -
    sigma))^2)``. The path ends short of pure noise, at ``sigma(1) < 1`` (0.99347 for the defaults); larger
    noise levels map to ``t = 1``. Its velocity target ``b'(t) ~ 1 / sqrt(t)`` is infinite at ``t = 0``, so
    training stays above ``t = 1e-5``.

    Args:
        beta_min: ``beta(0)`` (>= 0).
        beta_max: ``beta(1)`` (> 0).

    Raises:
        ValueError: For a negative ``beta_min``, a non-positive ``beta_max`` or non-finite values.
    """

    name = "vp"
    parameters = ("beta_min", "beta_max")
    training_time_range = (1e-5, 1.0)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        _check_finite_number("beta_min", beta_min)
        _check_finite_number("beta_max", beta_max)
        if beta_min < 0 or beta_max <= 0:
            raise ValueError(
                f"VP path needs beta_min >= 0 and beta_max > 0; got beta_min={beta_min}, beta_max={beta_max}."
            )
        super().__init__()
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
        """``L(t) = -log abar(t)``."""
        return self.beta_min * time + 0.5 * (self.beta_max - self.beta_min) * time**2

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`AffinePath.coefficients`."""
        exponent = self._exponent(time)
        return torch.exp(-0.5 * exponent), torch.sqrt(-torch.expm1(-exponent))

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`AffinePath.derivatives`; ``b'`` is infinite at ``t = 0`` (``b ~ sqrt(beta_min t)``)."""
        a, b = self.coefficients(time)
        beta = self.beta_min + (self.beta_max - self.beta_min) * time
        return -0.5 * beta * a, 0.5 * beta * a * a / b

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Closed form, clamped to ``t = 1`` beyond ``sigma(1)``; see :meth:`AffinePath.time_from_sigma`."""
        sigma = _as_time(sigma).clamp(0.0, 1.0)
        inside = sigma < self.sigma_range[1]
        # Beyond the path's range the formula would divide by 1 - sigma = 0 or exceed t = 1.
        safe = torch.where(inside, sigma, torch.zeros_like(sigma))
        exponent = torch.log1p((safe / (1.0 - safe)) ** 2)
        # The positive root of (beta_max - beta_min) t^2 / 2 + beta_min t - L = 0, written without a
        # cancelling difference (and valid for beta_max = beta_min).
        root = torch.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * exponent)
        denominator = self.beta_min + root
        time = torch.where(
            denominator > 0, 2.0 * exponent / denominator.clamp(min=1e-300), torch.zeros_like(safe)
        )
        return torch.where(inside, time.clamp(0.0, 1.0), torch.ones_like(time))


class CustomPath(AffinePath):
    """Any affine path from user callables ``a(t)``, ``b(t)`` (and optionally their derivatives).

    The callables take a float64 tensor of times and return a tensor (or number) broadcastable to it;
    derivatives default to autograd through them. ``t(sigma)`` is found by bisection, so ``sigma(t) = b / (a +
    b)`` must not decrease on [0, 1] (checked on a grid here). A path of functions cannot be saved by name: it
    is for training scripts and hand-written samplers; a saved model names one of :data:`PATH_NAMES`.

    Args:
        a: The data coefficient ``a(t)``.
        b: The noise coefficient ``b(t)``.
        da: Optional ``a'(t)``.
        db: Optional ``b'(t)``.

    Raises:
        ValueError: If an argument is not callable, a coefficient is not finite on [0, 1], or ``b / (a + b)``
            decreases somewhere on [0, 1].
    """

    name = "custom"

    def __init__(
        self,
        a: CoefficientFunction,
        b: CoefficientFunction,
        da: CoefficientFunction | None = None,
        db: CoefficientFunction | None = None,
    ) -> None:
        for label, function in (("a", a), ("b", b), ("da", da), ("db", db)):
            if function is not None and not callable(function):
                raise ValueError(f"{label}={function!r} must be a callable of the path time t.")
        super().__init__()
        self._a, self._b, self._da, self._db = a, b, da, db
        grid = torch.linspace(0.0, 1.0, _CHECK_GRID_POINTS, dtype=torch.float64)
        a_grid, b_grid = self.coefficients(grid)
        for label, values in (("a", a_grid), ("b", b_grid)):
            if not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).nonzero()[0])
                raise ValueError(
                    f"{label}(t) is not finite at t={float(grid[bad]):.6g}: {float(values[bad])}."
                )
        scale = a_grid + b_grid
        defined = scale.abs() > _SCALE_FLOOR
        sigma, times = (b_grid / scale)[defined], grid[defined]
        drops = (sigma[1:] - sigma[:-1] < -1e-9).nonzero()
        if len(drops):
            index = int(drops[0])
            raise ValueError(
                f"sigma(t) = b / (a + b) decreases from {float(sigma[index]):.6g} at t={float(times[index]):.6g} "
                f"to {float(sigma[index + 1]):.6g} at t={float(times[index + 1]):.6g}; the mapping onto the "
                "straight path needs it non-decreasing on [0, 1] (noise growing with t; wrap the path in "
                "ReversedPath for time running the other way)."
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
            value = CustomPath._evaluate(function, leaf)
            if not value.requires_grad:  # a constant coefficient
                return torch.zeros_like(time)
            (gradient,) = torch.autograd.grad(value.sum(), leaf)
        return gradient

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`AffinePath.coefficients`."""
        return self._evaluate(self._a, time), self._evaluate(self._b, time)

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The given derivatives, else autograd; see :meth:`AffinePath.derivatives`."""
        da = self._evaluate(self._da, time) if self._da is not None else self._differentiate(self._a, time)
        db = self._evaluate(self._db, time) if self._db is not None else self._differentiate(self._b, time)
        return da, db


class ReversedPath(AffinePath):
    """A path with time running the other way, from noise (``t = 0``) to data (``t = 1``): ``a(1 - t)``, ``b(1 - t)``.

    SiT and facebookresearch/flow_matching write their paths so; SiT's linear path is
    ``ReversedPath(LinearPath())`` (``x_t = t x0 + (1 - t) noise``, velocity ``x0 - noise``). The model's
    velocity is the derivative in its own time, so the derivatives change sign.

    Args:
        path: The path in the package's direction (noise growing with time).
    """

    def __init__(self, path: AffinePath) -> None:
        if isinstance(path, ReversedPath):
            raise ValueError("ReversedPath(ReversedPath(path)) is path itself; use path.")
        super().__init__()
        self.path = path
        self.name = path.name
        self.parameters = (*path.parameters, "reverse_time")
        low, high = path.training_time_range
        self.training_time_range = (1.0 - high, 1.0 - low)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The wrapped path's parameters and ``reverse_time=True``."""
        return {**self.path.kwargs, "reverse_time": True}

    def __repr__(self) -> str:
        return f"ReversedPath({self.path!r})"

    def coefficients(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a(1 - t), b(1 - t))``; see :meth:`AffinePath.coefficients`."""
        return self.path.coefficients(1.0 - time)

    def derivatives(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-a'(1 - t), -b'(1 - t))``; see :meth:`AffinePath.derivatives`."""
        da, db = self.path.derivatives(1.0 - time)
        return -da, -db

    def sigma_from_time(self, time: float | torch.Tensor) -> torch.Tensor:
        """See :meth:`AffinePath.sigma_from_time`."""
        return self.path.sigma_from_time(1.0 - _as_time(time))

    @property
    def sigma_range(self) -> tuple[float, float]:
        """The wrapped path's range (reached at the other ends of time)."""
        return self.path.sigma_range

    def time_from_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """``1 - t(sigma)`` of the wrapped path; see :meth:`AffinePath.time_from_sigma`."""
        return 1.0 - self.path.time_from_sigma(sigma)
