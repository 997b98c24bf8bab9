"""Flow schedulers by short name: this package's and diffusers', built from another scheduler's config.

The command-line tools and benchmarks pick a sampler by name (``--scheduler heun``); this table is the one
place that knows how to turn a saved scheduler config into each of them. Every scheduler is built with its
own default prediction type (the velocity, which diffusers' multistep solvers call ``"flow_prediction"``):
`FlowPipeline` hands any scheduler what it expects, whatever the model predicts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .scheduling_flow_euler import FlowEulerScheduler
from .scheduling_flow_heun import FlowHeunScheduler
from .scheduling_flow_multistep import FlowMultistepScheduler
from .scheduling_flow_sde import FlowSDEScheduler


def shift_of(config: dict[str, Any]) -> float:
    """The shift of a flow scheduler config: ``shift`` (FlowMatch / ours) or ``flow_shift`` (multistep solvers).

    Args:
        config: A scheduler config.

    Returns:
        The shift (1 when the config has none).
    """
    return float(config.get("shift", config.get("flow_shift", 1.0)))


FLOW_SETTINGS: tuple[str, ...] = (
    "num_train_timesteps",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "time_shift_type",
)
"""Settings of the flow a model was trained on, carried from one scheduler to another by name (with the shift).
A sampler's own settings (its grid, order, corrector, noise) are not carried: two samplers may share a key
with another meaning (``solver_order`` / ``lower_order_final`` of the multistep solver broke diffusers' UniPC
at few steps), and a sampler named by the user should be that sampler as its defaults make it."""


def _from_config(
    scheduler_class: type[SchedulerMixin], config: dict[str, Any], **overrides: Any
) -> SchedulerMixin:
    """``from_config`` with the flow's settings that the class takes (:data:`FLOW_SETTINGS`) and ``overrides``."""
    accepted = inspect.signature(scheduler_class.__init__).parameters
    kept = {key: config[key] for key in FLOW_SETTINGS if key in config and key in accepted}
    return scheduler_class.from_config({**kept, **overrides})


def _shifted(scheduler_class: type[SchedulerMixin]) -> Callable[[dict[str, Any]], SchedulerMixin]:
    def build(config: dict[str, Any]) -> SchedulerMixin:
        return _from_config(scheduler_class, config, shift=shift_of(config))

    return build


def _multistep_flow(scheduler_class: type[SchedulerMixin]) -> Callable[[dict[str, Any]], SchedulerMixin]:
    def build(config: dict[str, Any]) -> SchedulerMixin:
        return _from_config(
            scheduler_class,
            config,
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            flow_shift=shift_of(config),
        )

    return build


SCHEDULERS: dict[str, Callable[[dict[str, Any]], SchedulerMixin]] = {
    "euler": _shifted(FlowEulerScheduler),
    "heun": _shifted(FlowHeunScheduler),
    "sde": _shifted(FlowSDEScheduler),
    "multistep": _shifted(FlowMultistepScheduler),
    "flowmatch-euler": _shifted(FlowMatchEulerDiscreteScheduler),
    "flowmatch-heun": _shifted(FlowMatchHeunDiscreteScheduler),
    "dpm": _multistep_flow(DPMSolverMultistepScheduler),
    "unipc": _multistep_flow(UniPCMultistepScheduler),
}
"""Short name -> builder ``(config) -> scheduler``."""


_CLASS_NAMES: dict[str, str] = {
    "FlowEulerScheduler": "euler",
    "FlowHeunScheduler": "heun",
    "FlowSDEScheduler": "sde",
    "FlowMultistepScheduler": "multistep",
    "FlowMatchEulerDiscreteScheduler": "flowmatch-euler",
    "FlowMatchHeunDiscreteScheduler": "flowmatch-heun",
    "DPMSolverMultistepScheduler": "dpm",
    "UniPCMultistepScheduler": "unipc",
}


def scheduler_name(scheduler: SchedulerMixin) -> str:
    """The short name of :data:`SCHEDULERS` a scheduler goes by (its class name if it has none).

    Args:
        scheduler: A scheduler, e.g. a loaded pipeline's.

    Returns:
        ``"euler"``, ``"multistep"``, ... or the class name.
    """
    name = type(scheduler).__name__
    return _CLASS_NAMES.get(name, name)


def make_scheduler(name: str, config: dict[str, Any] | None = None) -> SchedulerMixin:
    """Build a flow scheduler by short name, on the flow of another scheduler's config.

    The flow's settings carry over (the shift, whatever the config calls it, and :data:`FLOW_SETTINGS`); the
    named sampler's own settings are its defaults.

    Args:
        name: One of `SCHEDULERS`: ``euler``, ``heun``, ``sde``, ``multistep`` (this package),
            ``flowmatch-euler``, ``flowmatch-heun`` (diffusers' FlowMatch schedulers), ``dpm``, ``unipc``
            (diffusers' multistep solvers in flow mode).
        config: The config to start from (typically ``pipeline.scheduler.config``); defaults if None.

    Returns:
        The scheduler.

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not supported; allowed: {', '.join(SCHEDULERS)}.")
    return SCHEDULERS[name](dict(config or {}))


def model_evaluations(scheduler: SchedulerMixin, num_inference_steps: int) -> int:
    """Model calls per image (a guided call counted once) of ``num_inference_steps`` steps of ``scheduler``.

    Every sampler calls the model once per entry of its ``timesteps``: one per step for Euler and the
    multistep solvers, two per step but the last for Heun.

    Args:
        scheduler: Any scheduler (a copy is set up; the scheduler itself is left as it is).
        num_inference_steps: Steps.

    Returns:
        The number of model evaluations.
    """
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(num_inference_steps)
    return int(len(probe.timesteps))


def steps_for_model_evaluations(scheduler: SchedulerMixin, budget: int) -> int:
    """The most steps of ``scheduler`` whose model evaluations fit in ``budget`` (Heun: 4 steps for 8).

    Args:
        scheduler: Any scheduler.
        budget: Model evaluations per image allowed.

    Returns:
        The number of steps (at least 1).

    Raises:
        ValueError: If ``budget`` < 1.
    """
    if budget < 1:
        raise ValueError(f"budget={budget} model evaluations must be >= 1.")
    steps = 1
    while steps < budget and model_evaluations(scheduler, steps + 1) <= budget:
        steps += 1
    return steps
