"""The flow-matching training objective: noise levels to train at, targets, loss weights, label dropout.

Noise levels ``sigma`` are drawn on the straight path (:mod:`flow_pipelines.paths`) from one of three densities
(SD3, Esser et al. 2024), then optionally shifted by :func:`flow_pipelines.paths.shift_sigmas`:

- ``uniform``: ``sigma ~ U(0, 1)``;
- ``logit_normal``: ``sigma = sigmoid(n)``, ``n ~ N(logit_mean, logit_std**2)``;
- ``mode``: ``sigma = 1 - u - mode_scale * (cos(pi u / 2)**2 - 1 + u)``, ``u ~ U(0, 1)``.

The model is trained on its path, in the path's own terms: ``sigma`` moves to the path time of the same
signal-to-noise ratio, ``t = path.time_from_sigma(sigma)`` (``t = sigma`` on the straight path), clamped to the
path's ``training_time_range``; the model sees ``path.interpolate(x0, noise, t)`` at ``t * num_train_timesteps``,
its output of ``prediction_type`` is converted to the ``loss_target`` type (:meth:`AffinePath.convert`) and
compared with ``path.target``. The two types are chosen independently; loss weights are functions of ``sigma``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from ..paths import (
    PATH_NAMES,
    PREDICTION_TYPES,
    STRAIGHT_PATH,
    AffinePath,
    check_prediction_type,
    get_path,
    shift_sigmas,
)
from .flags import settings_from_args

TIME_SAMPLING_SCHEMES: tuple[str, ...] = ("uniform", "logit_normal", "mode")
LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "sigma_sqrt", "cosmap")

# The mode density is a monotone map of u only for scales in this range (its derivative stays < 0).
_MODE_SCALE_RANGE: tuple[float, float] = (-1.0, 2.0 / (math.pi - 2.0))


def check_time_sampling(
    scheme: str, logit_std: float = 1.0, mode_scale: float = 1.29, shift: float = 1.0
) -> None:
    """Validate time-sampling settings.

    Args:
        scheme: One of ``"uniform"``, ``"logit_normal"``, ``"mode"``.
        logit_std: Standard deviation of the logit-normal density (must be > 0).
        mode_scale: Scale of the mode density, in ``[-1, 2 / (pi - 2)]`` (where the map is monotone).
        shift: The sigma shift (must be > 0).

    Raises:
        ValueError: Naming the offending value and what is allowed.
    """
    if scheme not in TIME_SAMPLING_SCHEMES:
        raise ValueError(
            f"time sampling {scheme!r} is not supported; allowed: {', '.join(TIME_SAMPLING_SCHEMES)}."
        )
    if not logit_std > 0:
        raise ValueError(f"logit_std={logit_std} must be > 0.")
    low, high = _MODE_SCALE_RANGE
    if not low <= mode_scale <= high:
        raise ValueError(
            f"mode_scale={mode_scale} must lie in [{low}, {high:.4f}] for the mode density to be valid."
        )
    if not shift > 0:
        raise ValueError(f"shift={shift} must be > 0.")


def sample_sigmas(
    batch_size: int,
    scheme: str = "logit_normal",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw one training noise level per sample.

    Args:
        batch_size: Number of noise levels.
        scheme: ``"uniform"``, ``"logit_normal"`` or ``"mode"`` (see the module docstring).
        logit_mean: Mean of the logit-normal density's underlying normal.
        logit_std: Its standard deviation.
        mode_scale: Scale of the mode density (0 gives the uniform density).
        shift: Applied afterwards with :func:`flow_pipelines.paths.shift_sigmas`; > 1 favours high noise.
        generator: Random source (on ``device``), for reproducible draws.
        device: Where to create the tensor (the generator's device if None).

    Returns:
        A float32 tensor ``(batch_size,)`` of noise levels in [0, 1].

    Raises:
        ValueError: For an unknown scheme or invalid parameters.
    """
    check_time_sampling(scheme, logit_std, mode_scale, shift)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    if scheme == "logit_normal":
        normal = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float32)
        sigmas = torch.sigmoid(normal * logit_std + logit_mean)
    else:
        uniform = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float32)
        if scheme == "mode":
            sigmas = 1.0 - uniform - mode_scale * (torch.cos(math.pi * uniform / 2.0) ** 2 - 1.0 + uniform)
            # Rounding can step a hair outside [0, 1] at the ends.
            sigmas = sigmas.clamp(0.0, 1.0)
        else:
            sigmas = uniform
    return shift_sigmas(sigmas, shift)


def loss_weights(sigmas: torch.Tensor, weighting: str = "none") -> torch.Tensor:
    """Per-sample loss weights as a function of the noise level (SD3's options).

    Args:
        sigmas: Noise levels ``(batch,)``.
        weighting: ``"none"`` (all ones), ``"sigma_sqrt"`` (``sigma**-2``, floored at sigma = 1e-3 so a
            draw at zero stays finite) or ``"cosmap"`` (``2 / (pi (1 - 2 sigma + 2 sigma**2))``).

    Returns:
        Weights ``(batch,)`` in ``sigmas``' dtype.

    Raises:
        ValueError: For an unknown weighting.
    """
    if weighting == "none":
        return torch.ones_like(sigmas)
    if weighting == "sigma_sqrt":
        return sigmas.clamp(min=1e-3) ** -2.0
    if weighting == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * sigmas + 2.0 * sigmas**2))
    raise ValueError(f"loss weighting {weighting!r} is not supported; allowed: {', '.join(LOSS_WEIGHTINGS)}.")


def drop_labels(
    class_labels: torch.Tensor,
    probability: float,
    null_class_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace each label by the null class with the given probability (for classifier-free guidance).

    Args:
        class_labels: Integer labels ``(batch,)``.
        probability: Chance of dropping each label, in [0, 1].
        null_class_id: The null class id (``config.num_classes`` of the model).
        generator: Random source, on the labels' device.

    Returns:
        A new label tensor.

    Raises:
        ValueError: If the probability is outside [0, 1].
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"label dropout probability {probability} must lie in [0, 1].")
    if probability == 0.0:
        return class_labels.clone()
    drop = torch.rand(class_labels.shape, generator=generator, device=class_labels.device) < probability
    return torch.where(drop, torch.full_like(class_labels, null_class_id), class_labels)


@dataclass
class FlowMatchingObjective:
    """Flow-matching loss on a path, with independent model-output and loss-target types.

    Args:
        prediction_type: What the model outputs: ``"velocity"``, ``"sample"`` or ``"epsilon"``.
        loss_target: What the loss regresses: the same three; the output is converted first.
        time_sampling: Noise-level density: ``"uniform"``, ``"logit_normal"`` or ``"mode"``.
        logit_mean: Logit-normal mean.
        logit_std: Logit-normal standard deviation.
        mode_scale: Mode-density scale.
        shift: Sigma shift applied to the drawn noise levels.
        loss_weighting: ``"none"``, ``"sigma_sqrt"`` or ``"cosmap"``.
        num_train_timesteps: The model's time scale: it is called with ``t * num_train_timesteps``.
        path: The path trained on (:func:`flow_pipelines.paths.get_path`); the straight path by default.

    Raises:
        ValueError: For any unknown name or invalid parameter, at construction.
    """

    prediction_type: str = "velocity"
    loss_target: str = "velocity"
    time_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0
    loss_weighting: str = "none"
    num_train_timesteps: int = 1000
    path: AffinePath = STRAIGHT_PATH

    def __post_init__(self) -> None:
        if not isinstance(self.path, AffinePath):
            raise ValueError(f"path={self.path!r} must be a flow_pipelines.paths.AffinePath.")
        check_prediction_type(self.prediction_type)
        try:
            check_prediction_type(self.loss_target)
        except ValueError:
            raise ValueError(
                f"loss_target={self.loss_target!r} is not supported; allowed: {', '.join(PREDICTION_TYPES)}."
            ) from None
        check_time_sampling(self.time_sampling, self.logit_std, self.mode_scale, self.shift)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"loss weighting {self.loss_weighting!r} is not supported; allowed: {', '.join(LOSS_WEIGHTINGS)}."
            )

    def sample_sigmas(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw training noise levels with this objective's density and shift.

        Args:
            batch_size: Number of noise levels.
            generator: Random source.
            device: Where to create them.

        Returns:
            Noise levels ``(batch_size,)`` in [0, 1].
        """
        return sample_sigmas(
            batch_size,
            self.time_sampling,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            shift=self.shift,
            generator=generator,
            device=device,
        )

    def path_times(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The path times of our noise levels, clamped to the path's ``training_time_range``.

        Args:
            sigmas: Our noise levels ``(batch,)``.

        Returns:
            Path times ``(batch,)`` in ``sigmas``' dtype and device (``sigmas`` itself on the straight path).
        """
        times = self.path.time_from_sigma(sigmas).clamp(*self.path.training_time_range)
        return times.to(device=sigmas.device, dtype=sigmas.dtype)

    def training_inputs(
        self, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw noise and noise levels for a clean batch and build the model input.

        Args:
            x0: Clean samples ``(batch, ...)``.
            generator: Random source on ``x0``'s device.

        Returns:
            ``(noisy, timesteps, noise, sigmas)``: the model input (the path's point), the model's time input
            ``t * num_train_timesteps`` (float32), the noise and our noise levels.
        """
        sigmas = self.sample_sigmas(x0.shape[0], generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        times = self.path_times(sigmas)
        noisy = self.path.interpolate(x0, noise, times)
        return noisy, times * self.num_train_timesteps, noise, sigmas

    def loss(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        noisy: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted mean squared error between the converted model output and the exact target.

        Args:
            model_output: The model's output at ``(noisy, t(sigmas))``, of type ``prediction_type``.
            x0: Clean samples.
            noise: The noise used to build ``noisy``.
            sigmas: Our noise levels ``(batch,)``.
            noisy: The model input (the path's point at ``path_times(sigmas)``), recomputed if not given.

        Returns:
            A scalar loss (float32): per-sample mean over all non-batch dimensions, weighted, then averaged
            over the batch.
        """
        times = self.path_times(sigmas.float())
        if noisy is None:
            noisy = self.path.interpolate(x0, noise, times)
        prediction = self.path.convert(
            model_output.float(), noisy.float(), times, self.prediction_type, self.loss_target
        )
        target = self.path.target(x0.float(), noise.float(), times, self.loss_target)
        per_sample = (prediction - target).pow(2).flatten(1).mean(dim=1)
        weights = loss_weights(sigmas.float(), self.loss_weighting)
        return (weights * per_sample).mean()


def add_objective_args(parser: argparse.ArgumentParser) -> None:
    """The objective's flags: path, prediction and loss types, noise-level density, loss weights, label dropout.

    Args:
        parser: The training script's parser.
    """
    objective = parser.add_argument_group("objective")
    objective.add_argument(
        "--path",
        default="linear",
        choices=PATH_NAMES,
        help="The noising path trained on (flow_pipelines.paths); the pipeline samples any of them.",
    )
    objective.add_argument(
        "--vp_beta_min", type=float, default=None, help="beta_min of --path vp (default: the path's, 0.1)."
    )
    objective.add_argument(
        "--vp_beta_max", type=float, default=None, help="beta_max of --path vp (default: the path's, 20)."
    )
    objective.add_argument("--prediction_type", default="velocity", choices=PREDICTION_TYPES)
    objective.add_argument(
        "--loss_target", default=None, choices=PREDICTION_TYPES, help="Default: prediction_type."
    )
    objective.add_argument(
        "--time_sampling",
        "--weighting_scheme",
        dest="time_sampling",
        default="logit_normal",
        choices=TIME_SAMPLING_SCHEMES,
    )
    objective.add_argument("--logit_mean", type=float, default=0.0)
    objective.add_argument("--logit_std", type=float, default=1.0)
    objective.add_argument("--mode_scale", type=float, default=1.29)
    objective.add_argument("--shift", type=float, default=1.0, help="Shift of the training noise levels.")
    objective.add_argument("--loss_weighting", default="none", choices=LOSS_WEIGHTINGS)
    objective.add_argument(
        "--label_dropout", type=float, default=0.1, help="Chance of the null class (for CFG)."
    )


def path_from_args(args: argparse.Namespace) -> AffinePath:
    """The path of ``--path`` (with ``--vp_beta_min`` / ``--vp_beta_max`` for ``vp``).

    Args:
        args: The parsed flags.

    Returns:
        The path.

    Raises:
        ValueError: For beta flags with another path, or invalid betas.
    """
    betas = {
        key: value
        for key, value in (("beta_min", args.vp_beta_min), ("beta_max", args.vp_beta_max))
        if value is not None
    }
    if betas and args.path != "vp":
        raise ValueError(f"--vp_beta_min / --vp_beta_max apply to --path vp only; got --path {args.path}.")
    return get_path(args.path, **betas)


def objective_from_args(args: argparse.Namespace, num_train_timesteps: int = 1000) -> FlowMatchingObjective:
    """The objective the flags describe.

    Args:
        args: The parsed flags.
        num_train_timesteps: The model's time scale.

    Returns:
        The objective.

    Raises:
        ValueError: For invalid settings (see :class:`FlowMatchingObjective` and :func:`path_from_args`), or a
            label dropout outside [0, 1].
    """
    if not 0.0 <= args.label_dropout <= 1.0:
        raise ValueError(f"--label_dropout={args.label_dropout} must lie in [0, 1].")
    path = path_from_args(args)
    if path.is_singular(1.0, args.prediction_type):
        # Sampling starts at pure noise, where such a model's output determines nothing: it could not be sampled.
        raise ValueError(
            f"--prediction_type {args.prediction_type} on --path {args.path} could not be sampled from pure noise "
            "(it says nothing about the data at sigma = 1). Use --path vp, or --prediction_type velocity or sample "
            f"with --loss_target {args.prediction_type} to train with that loss."
        )
    return settings_from_args(
        FlowMatchingObjective,
        args,
        loss_target=args.loss_target or args.prediction_type,
        num_train_timesteps=num_train_timesteps,
        path=path,
    )
