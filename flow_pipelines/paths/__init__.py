"""The path: how data, noise and time relate, and every conversion between what a model may predict.

The package's convention, shared with diffusers' ``FlowMatch*`` schedulers, is the **straight path**::

    x_sigma = (1 - sigma) * x0 + sigma * noise,   sigma in [0, 1], sigma = 1 is pure noise
    timestep = sigma * num_train_timesteps,        velocity = dx_sigma / dsigma = noise - x0

and sampling integrates ``dx/dsigma = velocity`` from sigma = 1 down to 0. Schedulers, the training loss, the
guided velocity of a model and the likelihood all work on it.

A model may be trained on any **affine path** in its own time ``t`` in [0, 1],

    x_t = a(t) * x0 + b(t) * noise,   called with timestep = t * num_train_timesteps,

predicting the path's velocity ``dx_t/dt = a'(t) x0 + b'(t) noise``, the data ``x0`` ("sample") or the noise
("epsilon"). :class:`AffinePath` is that one abstraction; a path is its coefficients ``a, b`` (and their
derivatives) and nothing else: :class:`LinearPath` (``a = 1 - t, b = t``: the straight path itself, the
default), :class:`CosinePath`, :class:`VPPath`, :class:`CustomPath` (any user callables) and
:class:`ReversedPath` (time running from noise to data, as in SiT and facebookresearch/flow_matching).

Two facts make every conversion linear and every path samplable with every flow scheduler:

- Given the point ``x`` at time ``t`` and a prediction ``p`` of any type, the data and noise estimates are
  linear in ``(x, p)`` (:meth:`AffinePath.decompose`): ``x0 = (x - b p) / a`` for an epsilon prediction,
  ``noise = (x - a p) / b`` for a sample one, and the 2 x 2 solve with ``a' x0 + b' noise = p`` for a velocity.
  Any type converts to any other through them (:meth:`AffinePath.convert`).
- With ``c = a + b``, ``x_t / c = (1 - sigma) x0 + sigma noise`` with ``sigma = b / (a + b)``: every affine path
  is a change of time and scale of the straight one. A point ``x`` at our noise level ``sigma`` is the point
  ``c * x`` at the path time ``t(sigma)``; :meth:`AffinePath.at_sigma` gives the model's input and timestep
  there and turns its output into our velocity (for the straight path all of it is the identity).

A path whose noise levels do not span [0, 1] (the VP path ends at ``sigma(1) < 1``) is evaluated at its end
for noise levels beyond it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .affine import (
    PREDICTION_TYPE_ALIASES,
    PREDICTION_TYPES,
    STRAIGHT_PATH,
    AffinePath,
    Coefficient,
    Decomposition,
    LinearPath,
    PathPoint,
    check_prediction_type,
    expand,
    shift_sigmas,
)
from .curved import CosinePath, CustomPath, ReversedPath, VPPath

PATH_NAMES: tuple[str, ...] = ("linear", "cosine", "vp")
_PATHS: dict[str, type[AffinePath]] = {"linear": LinearPath, "cosine": CosinePath, "vp": VPPath}


def get_path(name: str, reverse_time: bool = False, **kwargs: Any) -> AffinePath:
    """Build a named path.

    Args:
        name: ``"linear"``, ``"cosine"`` or ``"vp"``.
        reverse_time: Time running from noise (``t = 0``) to data (``t = 1``), see :class:`ReversedPath`.
        **kwargs: The path's parameters (``beta_min``, ``beta_max`` for ``"vp"``; none for the others).

    Returns:
        The path.

    Raises:
        ValueError: For an unknown name (the message lists the known ones) or parameters the path does not take.
    """
    if not isinstance(name, str) or name not in _PATHS:
        raise ValueError(f"Unknown path {name!r}; known paths: {', '.join(PATH_NAMES)}.")
    path_class = _PATHS[name]
    unknown = sorted(set(kwargs) - set(path_class.parameters))
    if unknown:
        allowed = ", ".join((*path_class.parameters, "reverse_time"))
        raise ValueError(f"path {name!r} does not take {unknown}; allowed parameters: {allowed}.")
    if not isinstance(reverse_time, bool):
        raise ValueError(f"reverse_time={reverse_time!r} must be True or False.")
    path = path_class(**kwargs)
    return ReversedPath(path) if reverse_time else path


def path_from_config(config: Mapping[str, Any] | Any) -> AffinePath:
    """The path a model was trained on, from its config (``path`` and ``path_kwargs``; the straight path if absent).

    Args:
        config: A model config (a ``FrozenDict`` / mapping, or an object with attributes).

    Returns:
        The path.

    Raises:
        ValueError: For an unknown path name or parameters.
    """

    def read(key: str) -> Any:
        return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)

    return get_path(read("path") or "linear", **(read("path_kwargs") or {}))


__all__ = [
    "PATH_NAMES",
    "PREDICTION_TYPES",
    "PREDICTION_TYPE_ALIASES",
    "STRAIGHT_PATH",
    "AffinePath",
    "Coefficient",
    "CosinePath",
    "CustomPath",
    "Decomposition",
    "LinearPath",
    "PathPoint",
    "ReversedPath",
    "VPPath",
    "check_prediction_type",
    "expand",
    "get_path",
    "path_from_config",
    "shift_sigmas",
]
