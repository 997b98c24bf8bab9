"""What every flow scheduler shares: the sigma grid, the diffusers scheduler surface, and step bookkeeping.

A subclass only says how the grid is walked (`_expand_grid`, for methods that evaluate the model more
than once per step) and what one step does with the velocity (`_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..paths import STRAIGHT_PATH, check_prediction_type, shift_sigmas

SIGMA_SCHEDULES: tuple[str, ...] = ("uniform", "karras", "logsnr")
# How much the "logsnr" schedule stretches the log-SNR of the uniform grid: chosen from the endpoint error of
# the multistep solver at 5 to 16 steps on Gaussian data of std 0.05 to 2 and on Gaussian mixtures, where
# 1.15 to 1.25 did best at every step count (1 is the uniform grid).
LOGSNR_STRETCH = 1.2


@dataclass
class FlowSchedulerOutput(BaseOutput):
    """Output of a flow scheduler's `step`.

    Args:
        prev_sample: The sample at the next (lower) noise level; the input of the next model call.
        pred_original_sample: The clean sample ``x0`` predicted by this model evaluation.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


@dataclass(frozen=True)
class FlowStep:
    """What one scheduler step works with: the velocity at the current sample and the noise level it goes to.

    Args:
        velocity: The velocity ``noise - x0`` at ``(sample, sigma)`` (float32).
        sample: The current sample ``x_sigma`` (float32).
        sigma: Its noise level.
        sigma_next: The noise level the step goes to (lower; 0 at the end).
        generator: Random generator(s) for stochastic schedulers.
    """

    velocity: torch.Tensor
    sample: torch.Tensor
    sigma: float
    sigma_next: float
    generator: torch.Generator | list[torch.Generator] | None = None

    @property
    def size(self) -> float:
        """``sigma_next - sigma``: negative, as sampling runs towards the data."""
        return self.sigma_next - self.sigma


def _as_sigma_array(sigmas: list[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate explicit sigmas: a non-empty 1-d, finite, strictly decreasing sequence in [0, 1]."""
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.detach().cpu().double().numpy()
    array = np.asarray(sigmas, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"sigmas must be a non-empty 1-d sequence, got shape {tuple(array.shape)}.")
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(f"sigmas must lie in [0, 1] (1 is pure noise), got {array.tolist()}.")
    if np.any(np.diff(array) >= 0):
        raise ValueError(
            f"sigmas must be strictly decreasing (from noise towards data), got {array.tolist()}."
        )
    if array.size == 1 and array[0] == 0.0:
        raise ValueError("sigmas=[0.0] has no step to take; give at least one sigma > 0.")
    return array


class FlowSchedulerBase(SchedulerMixin, ConfigMixin):
    """Base of the flow-matching schedulers (not used on its own).

    The path is ``x_sigma = (1 - sigma) * x0 + sigma * noise``; sampling integrates
    ``dx/dsigma = velocity`` from sigma = 1 down to 0, and the model is called with
    ``timestep = sigma * num_train_timesteps``. The schedulers accept the same calls as diffusers'
    ``FlowMatchEulerDiscreteScheduler`` and swap with it through ``from_config`` both ways.

    Args:
        num_train_timesteps: The time scale the model was trained with: ``timestep = sigma * num_train_timesteps``.
        shift: SD3-style shift ``shift * s / (1 + (shift - 1) * s)``, applied once to the grid (also to
            explicit ``sigmas``, as diffusers does). Values > 1 spend more steps at high noise.
        prediction_type: What the model outputs: ``"velocity"`` (``noise - x0``), ``"sample"`` (``x0``)
            or ``"epsilon"`` (``noise``); `step` converts it.
        sigma_schedule: Spacing of the grid before the shift: ``"uniform"`` (equal steps in sigma),
            ``"karras"`` (``sigma_i = (1 - i / N) ** rho``, Karras et al.'s spacing between 1 and 0,
            dense near the data) or ``"logsnr"`` (the log signal-to-noise ratio ``log((1 - sigma) / sigma)``
            of the uniform grid stretched by `LOGSNR_STRETCH` ``= b``: ``sigma_i = u^b / (u^b + (1 - u)^b)``
            with ``u = 1 - i / N``; symmetric in log-SNR, with steps that shrink towards both ends of the path,
            where data of small and of large scale are resolved; made for few-step multistep solvers).
        rho: Exponent of the ``"karras"`` spacing.
        use_dynamic_shifting: Take the shift from the ``mu`` given to `set_timesteps` (``shift = exp(mu)``),
            as FLUX-style pipelines do, instead of from ``shift``.

    Raises:
        ValueError: For an unknown ``prediction_type`` or ``sigma_schedule``, or a non-positive
            ``shift``, ``rho`` or ``num_train_timesteps``.
    """

    _compatibles = [
        "FlowEulerScheduler",
        "FlowHeunScheduler",
        "FlowSDEScheduler",
        "FlowMultistepScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
    ]
    order = 1
    # Flow samples start as unit Gaussian noise and are fed to the model unscaled.
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        prediction_type: str = "velocity",
        sigma_schedule: str = "uniform",
        rho: float = 7.0,
        use_dynamic_shifting: bool = False,
    ) -> None:
        check_prediction_type(prediction_type)
        if sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(
                f"sigma_schedule={sigma_schedule!r} is not supported; allowed: {', '.join(SIGMA_SCHEDULES)}."
            )
        for name, value in (("num_train_timesteps", num_train_timesteps), ("shift", shift), ("rho", rho)):
            if not value > 0:
                raise ValueError(f"{name}={value!r} must be > 0.")
        self._shift = float(shift)
        self._reset_state()
        # Before set_timesteps: the training grid, as diffusers' schedulers expose it.
        grid = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float64)
        self.sigmas = shift_sigmas(grid, self._shift).float()
        self.timesteps = self.sigmas[:-1] * num_train_timesteps
        self.num_inference_steps: int | None = None

    # ----------------------------------------------------------------------------- state
    def _reset_state(self) -> None:
        """Forget the position in the grid (and any multi-stage state of a subclass)."""
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def shift(self) -> float:
        """The shift applied to the sigma grid (see `set_shift`)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Change the shift used by the next `set_timesteps` call, as diffusers' schedulers allow.

        Args:
            shift: The new shift, > 0.

        Raises:
            ValueError: If ``shift`` is not positive.
        """
        if not shift > 0:
            raise ValueError(f"shift={shift!r} must be > 0.")
        self._shift = float(shift)

    @property
    def step_index(self) -> int | None:
        """Index into `timesteps` of the next `step` call; ``None`` before the first one."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index the first `step` starts from, when set by a pipeline (image-to-image)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run of `step` calls at ``timesteps[begin_index]``.

        Args:
            begin_index: Index into `timesteps`.
        """
        self._begin_index = begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """Compatible classes from diffusers and from this package."""
        import diffusers

        from .. import schedulers as ours

        names = dict.fromkeys([cls.__name__] + list(cls._compatibles))
        return [getattr(lib, n) for n in names for lib in (ours, diffusers) if hasattr(lib, n)]

    # ----------------------------------------------------------------------------- the grid
    def _base_grid(
        self,
        num_inference_steps: int | None,
        sigmas: list[float] | np.ndarray | torch.Tensor | None,
        mu: float | None,
    ) -> torch.Tensor:
        """Noise levels visited by the sampler, from noise down to a final 0 (float64)."""
        if sigmas is not None:
            grid = _as_sigma_array(sigmas)
            if grid[-1] != 0.0:
                grid = np.append(grid, 0.0)
            if num_inference_steps is not None and num_inference_steps != grid.size - 1:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} disagrees with the {grid.size - 1} steps that "
                    "sigmas describe; pass one of them."
                )
            grid = torch.from_numpy(grid)
        else:
            if num_inference_steps is None:
                raise ValueError("Pass num_inference_steps (an integer >= 1) or sigmas.")
            if isinstance(num_inference_steps, bool) or int(num_inference_steps) != num_inference_steps:
                raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer >= 1.")
            if num_inference_steps < 1:
                raise ValueError(f"num_inference_steps={num_inference_steps} must be an integer >= 1.")
            grid = self._default_grid(int(num_inference_steps))
        if self.config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("This scheduler has use_dynamic_shifting=True: pass mu to set_timesteps.")
            shift = math.exp(mu)
        else:
            shift = self._shift
        return shift_sigmas(grid, shift)

    def _default_grid(self, num_inference_steps: int) -> torch.Tensor:
        """The unshifted grid of ``num_inference_steps`` steps from 1 to 0 (float64), per ``sigma_schedule``."""
        grid = torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float64)
        if self.config.sigma_schedule == "karras":
            grid = grid**self.config.rho
        elif self.config.sigma_schedule == "logsnr":
            stretched = grid**LOGSNR_STRETCH
            grid = stretched / (stretched + (1.0 - grid) ** LOGSNR_STRETCH)
        return grid

    def _expand_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """The noise level of each model evaluation, plus the final one. One per grid point by default."""
        return grid

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Lay out the noise levels of a sampling run (call before the first `step`).

        Either ``num_inference_steps`` or ``sigmas`` defines the grid. Explicit ``sigmas`` are the noise
        levels the model is evaluated at; a final 0 is appended unless they already end in 0. The shift
        applies to both. Afterwards ``timesteps == sigmas[:-1] * num_train_timesteps``, one entry per
        model call.

        Args:
            num_inference_steps: Number of steps (>= 1).
            device: Where `timesteps` live; `sigmas` stay on the CPU.
            sigmas: Strictly decreasing noise levels in [0, 1].
            mu: Logarithm of the shift, for ``use_dynamic_shifting=True``.

        Raises:
            ValueError: If neither or inconsistent ``num_inference_steps`` and ``sigmas`` are given,
                ``num_inference_steps < 1``, ``sigmas`` are not strictly decreasing in [0, 1], or ``mu``
                is missing with dynamic shifting.
        """
        grid = self._base_grid(num_inference_steps, sigmas, mu)
        self.num_inference_steps = grid.numel() - 1
        self.sigmas = self._expand_grid(grid).float()
        self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).to(device=device)
        self._reset_state()

    # ----------------------------------------------------------------------------- diffusers surface
    def scale_model_input(
        self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Identity: flow models take ``x_sigma`` unscaled. Present for pipelines written for other schedulers.

        Args:
            sample: The model input.
            timestep: Ignored.

        Returns:
            ``sample`` unchanged.
        """
        return sample

    def _sigma_of(self, timesteps: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=like.device, dtype=torch.float32)
        return timesteps / self.config.num_train_timesteps

    def scale_noise(
        self, sample: torch.Tensor, timestep: float | torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Noise clean samples to the level of ``timestep``, for training and image-to-image.

        Args:
            sample: Clean samples ``x0``.
            timestep: ``sigma * num_train_timesteps``: a number, or one per sample.
            noise: Gaussian noise shaped like ``sample``.

        Returns:
            ``(1 - sigma) * sample + sigma * noise``.
        """
        sigma = self._sigma_of(timestep, sample).flatten()
        sigma = sigma.reshape(()) if sigma.numel() == 1 else sigma
        return STRAIGHT_PATH.interpolate(sample, noise, sigma.to(sample.dtype))

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: float | torch.Tensor
    ) -> torch.Tensor:
        """The diffusers name of the forward process: same as `scale_noise`.

        Args:
            original_samples: Clean samples ``x0``.
            noise: Gaussian noise shaped like them.
            timesteps: ``sigma * num_train_timesteps``, a number or one per sample.

        Returns:
            The noised samples.
        """
        return self.scale_noise(original_samples, timesteps, noise)

    def index_for_timestep(
        self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ) -> int:
        """Position of ``timestep`` in the schedule.

        A timestep that occurs twice (multi-evaluation methods) resolves to its second occurrence, the
        start of a step, so that a run started in the middle of the schedule skips no sigma.

        Args:
            timestep: One of `timesteps`.
            schedule_timesteps: The schedule to search; `timesteps` by default.

        Returns:
            The index.

        Raises:
            ValueError: If ``timestep`` is not in the schedule.
        """
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        timestep = torch.as_tensor(timestep, dtype=schedule_timesteps.dtype, device=schedule_timesteps.device)
        indices = (
            torch.isclose(schedule_timesteps, timestep.reshape(()), rtol=0.0, atol=1e-4).nonzero().flatten()
        )
        if indices.numel() == 0:
            raise ValueError(
                f"timestep {float(timestep):.6g} is not in this scheduler's timesteps "
                f"({schedule_timesteps[:8].tolist()}...); pass one of scheduler.timesteps."
            )
        return int(indices[1 if indices.numel() > 1 else 0])

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    # ----------------------------------------------------------------------------- stepping
    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> FlowSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Advance ``sample`` from the noise level of ``timestep`` to the next one in the schedule.

        Args:
            model_output: The model's prediction at ``(sample, timestep)``, of the configured ``prediction_type``.
            timestep: The current entry of `timesteps` (a float, ``sigma * num_train_timesteps``).
            sample: The current sample ``x_sigma``.
            generator: Random generator(s) for stochastic schedulers (one per sample, or one for all).
            return_dict: Return a `FlowSchedulerOutput` instead of a tuple.

        Returns:
            `FlowSchedulerOutput`, or the tuple ``(prev_sample, pred_original_sample)``.

        Raises:
            ValueError: If `set_timesteps` was not called, the schedule is exhausted, ``timestep`` is an
                integer index or not in the schedule, or the shapes of output and sample differ.
        """
        if self.num_inference_steps is None:
            raise ValueError(
                f"{type(self).__name__}.step was called before set_timesteps; call set_timesteps first."
            )
        if isinstance(timestep, int) or (
            isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()
        ):
            raise ValueError(
                f"timestep={timestep!r} is an integer; pass the float entries of scheduler.timesteps, "
                "not loop indices."
            )
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}, sample {tuple(sample.shape)}."
            )
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError(
                f"All {len(self.timesteps)} steps of this schedule have been taken; call set_timesteps again."
            )

        sigma = float(self.sigmas[self._step_index])
        sigma_next = float(self.sigmas[self._step_index + 1])
        sample32 = sample.float()
        velocity = STRAIGHT_PATH.convert(
            model_output.float(), sample32, sigma, self.config.prediction_type, "velocity"
        )
        pred_original = STRAIGHT_PATH.convert(velocity, sample32, sigma, "velocity", "sample")
        prev_sample = self._step(FlowStep(velocity, sample32, sigma, sigma_next, generator))
        self._step_index += 1

        prev_sample = prev_sample.to(sample.dtype)
        pred_original = pred_original.to(sample.dtype)
        if not return_dict:
            return (prev_sample, pred_original)
        return FlowSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original)

    def _step(self, step: FlowStep) -> torch.Tensor:
        """The sample at ``step.sigma_next``, from the velocity at ``step.sigma`` (float32).

        Implemented by each scheduler; ``self.step_index`` is the position of ``step.sigma`` in `sigmas`.
        """
        raise NotImplementedError
