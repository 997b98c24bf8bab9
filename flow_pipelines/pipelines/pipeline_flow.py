"""Class-conditional flow-matching sampling with classifier-free guidance, as a diffusers pipeline."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from diffusers.utils.hub_utils import _add_variant
from diffusers.utils.torch_utils import randn_tensor

from .. import flow
from ..file_utils import atomic_directory
from ..models import DiTModel
from ..paths import FlowPath, PathMapping, path_from_config

OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")

# What a scheduler's `prediction_type` means in this package's terms (diffusers calls velocity "flow_prediction").
_SCHEDULER_PREDICTION_ALIASES: dict[str, str] = {"flow_prediction": "velocity"}

# Defaults of diffusers' FLUX-style resolution-dependent shift, used when a scheduler with
# `use_dynamic_shifting=True` does not carry them in its config.
_DYNAMIC_SHIFT_DEFAULTS: dict[str, float] = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


def normalize_id2label(
    id2label: dict[int | str, str] | None, num_classes: int | None = None
) -> dict[int, str]:
    """Bring a class-name table to ``{int id: name}`` form; JSON stores the ids as strings.

    Args:
        id2label: Class names keyed by id (ints or digit strings), or ``None``.
        num_classes: When given, every id must lie in ``[0, num_classes)``.

    Returns:
        The table with integer keys, sorted by id (empty for ``None``).

    Raises:
        ValueError: If a key is not an integer, an id is out of range, or a name is not a non-empty string.
    """
    if id2label is None:
        return {}
    if not isinstance(id2label, dict):
        raise ValueError(f"id2label must be a dict of class id -> name, got {type(id2label).__name__}.")
    table: dict[int, str] = {}
    for key, name in id2label.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"id2label key {key!r} is not an integer class id.") from None
        if isinstance(key, float) and key != class_id:
            raise ValueError(f"id2label key {key!r} is not an integer class id.")
        if num_classes is not None and not 0 <= class_id < num_classes:
            raise ValueError(f"id2label has class id {class_id}; allowed ids are 0..{num_classes - 1}.")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"id2label[{class_id}] = {name!r} must be a non-empty string.")
        table[class_id] = name
    return dict(sorted(table.items()))


@dataclass(frozen=True)
class _Labels:
    """Per-call constants of the denoising loop: label batches for B and 2B calls, the model dtype, and the
    prediction types of the transformer (on its own path) and of the scheduler (on ours)."""

    cond: torch.Tensor
    null: torch.Tensor
    both: torch.Tensor
    model_dtype: torch.dtype
    model_prediction: str
    scheduler_prediction: str


def _accepted_parameters(function: Callable) -> set[str]:
    """Names of the keyword arguments ``function`` takes (everything, if it takes ``**kwargs``)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {"*"} | set(parameters)
    return set(parameters)


class FlowPipeline(DiffusionPipeline):
    r"""Class-conditional image generation with a flow-matching transformer and classifier-free guidance.

    Sampling integrates the flow from pure noise (sigma = 1) to data (sigma = 0) with any flow scheduler:
    this package's `FlowEulerScheduler`, `FlowHeunScheduler` and `FlowSDEScheduler`, diffusers'
    ``FlowMatchEulerDiscreteScheduler`` and ``FlowMatchHeunDiscreteScheduler``, and
    ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` created with ``use_flow_sigmas=True,
    prediction_type="flow_prediction"``. Guidance is ``uncond + s * (cond - uncond)`` on all channels,
    computed from one batched transformer call of twice the batch; the unconditional class id is
    ``transformer.config.num_classes``.

    A transformer trained on another affine path (config ``path``: ``"cosine"``, ``"vp"``; see
    :mod:`flow_pipelines.paths`) samples with the same schedulers: at each noise level sigma it is called
    with ``c * x`` at its own timestep ``s(sigma) * num_train_timesteps``, and its output (velocity on its
    path, sample or epsilon) is turned into our prediction of the scheduler's type. A converted DDPM model
    (``time_convention="ddpm"``, ``path="vp"``) may have ``out_channels = 2 * in_channels``: the learned
    variance channels are dropped.

    Without a VAE the transformer works in pixel space (images in [-1, 1]); with one, it works in the
    VAE's latent space and latents are decoded as ``vae.decode(latents / scaling_factor + shift_factor)``.

    Args:
        transformer: The class-conditional `DiTModel` (its output: what its config's ``prediction_type``
            says on its config's ``path``; velocity on our straight path by default).
        scheduler: A flow scheduler (see above).
        vae: Optional ``AutoencoderKL`` whose ``latent_channels`` equal the transformer's ``in_channels``.
        id2label: Optional class names by id; kept in the pipeline config so that it survives save/load.

    Raises:
        ValueError: If the VAE's latent channels differ from the transformer's input channels, the
            transformer's output channels differ from its input channels (other than a DDPM model's
            learned-variance layout), its path is unknown, or ``id2label`` is malformed.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: DiTModel,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        id2label: dict[int, str] | dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        in_channels = transformer.config.in_channels
        out_channels = getattr(transformer.config, "out_channels", None) or in_channels
        # A DDPM model's second half of channels is its learned variance; the epsilon comes first.
        learned_variance = (
            getattr(transformer.config, "time_convention", "flow") == "ddpm"
            and out_channels == 2 * in_channels
        )
        if out_channels != in_channels and not learned_variance:
            raise ValueError(
                f"The transformer has in_channels={in_channels} but out_channels={out_channels}; a flow model "
                "predicts a tensor shaped like its input, so they must be equal."
            )
        if vae is not None and vae.config.latent_channels != in_channels:
            raise ValueError(
                f"The VAE has latent_channels={vae.config.latent_channels} but the transformer has "
                f"in_channels={in_channels}; they must be equal."
            )
        path_from_config(transformer.config)
        table = normalize_id2label(id2label, transformer.config.num_classes)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        # JSON keys are strings: store them so, and the in-memory config equals the reloaded one.
        self.register_to_config(id2label={str(k): v for k, v in table.items()} or None)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self._interrupt = False

    # ----------------------------------------------------------------------------- properties
    @property
    def id2label(self) -> dict[int, str]:
        """Class names by integer id (empty if the pipeline has none)."""
        return normalize_id2label(self.config.get("id2label"))

    @id2label.setter
    def id2label(self, id2label: dict[int | str, str] | None) -> None:
        table = normalize_id2label(id2label, self.transformer.config.num_classes)
        self.register_to_config(id2label={str(k): v for k, v in table.items()} or None)

    @property
    def labels(self) -> dict[str, int]:
        """Class ids by name, the inverse of `id2label` (diffusers' ``DiTPipeline`` name for it)."""
        return {name: class_id for class_id, name in self.id2label.items()}

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the running (or last) call; a step-end callback may change it."""
        return self._guidance_scale

    @guidance_scale.setter
    def guidance_scale(self, value: float) -> None:
        self._guidance_scale = self._checked_guidance_scale(value)

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current guidance scale needs the unconditional prediction."""
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self) -> int:
        """Number of model evaluations (entries of ``scheduler.timesteps``) of the running or last call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set to True (e.g. from a callback) to stop the denoising loop after the current step."""
        return self._interrupt

    @property
    def null_class_id(self) -> int:
        """The unconditional ("null") class id: ``transformer.config.num_classes``."""
        return int(self.transformer.config.num_classes)

    @property
    def path(self) -> FlowPath:
        """The path the transformer was trained on (`flow_pipelines.paths`), from its config."""
        return path_from_config(self.transformer.config)

    # ----------------------------------------------------------------------------- input checks
    @staticmethod
    def _checked_guidance_scale(value: float) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"guidance_scale={value!r} must be a finite number >= 0 (1 disables guidance).")
        return float(value)

    def label_ids(self, class_labels: int | str | Sequence[int | str] | torch.Tensor) -> list[int]:
        """Resolve class labels (ids and/or names) to integer class ids.

        A name matches an ``id2label`` entry exactly, case-insensitively, or as one of its comma-separated
        synonyms (``"tench, Tinca tinca"`` answers to ``"tench"``). A string is always one name.

        Args:
            class_labels: An id, a name, or a sequence (or 1-d integer tensor) of them.

        Returns:
            One class id per label.

        Raises:
            ValueError: For an empty list, a name that is not in ``id2label``, an id outside
                ``[0, num_classes)``, or a value that is neither.
        """
        num_classes = self.null_class_id
        if isinstance(class_labels, torch.Tensor):
            if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.ndim > 1:
                raise ValueError(
                    f"class_labels tensor must be a 0-d or 1-d integer tensor, got {class_labels.dtype} "
                    f"of shape {tuple(class_labels.shape)}."
                )
            items: list[Any] = class_labels.flatten().tolist()
        elif isinstance(class_labels, (str, int, np.integer)):
            items = [class_labels]
        elif isinstance(class_labels, Sequence) or isinstance(class_labels, np.ndarray):
            items = list(class_labels)
        else:
            raise ValueError(
                f"class_labels={class_labels!r} must be a class id, a class name, or a list of them."
            )
        if not items:
            raise ValueError("class_labels is empty; pass at least one class id or name.")

        lookup: dict[str, int] | None = None
        ids: list[int] = []
        for item in items:
            if isinstance(item, str):
                if lookup is None:
                    lookup = self._name_lookup()
                key = item.strip().casefold()
                if key not in lookup:
                    raise ValueError(self._unknown_name_message(item))
                ids.append(lookup[key])
            elif isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
                if not 0 <= int(item) < num_classes:
                    raise ValueError(
                        f"class label {int(item)} is out of range; allowed class ids are 0..{num_classes - 1}."
                    )
                ids.append(int(item))
            else:
                raise ValueError(f"class label {item!r} must be an integer class id or a class name (str).")
        return ids

    def _name_lookup(self) -> dict[str, int]:
        """Case-folded names and comma-separated synonyms -> id; full names take precedence."""
        lookup: dict[str, int] = {}
        table = self.id2label
        for class_id, name in table.items():
            for synonym in name.split(","):
                if synonym.strip():
                    lookup.setdefault(synonym.strip().casefold(), class_id)
        for class_id, name in table.items():
            lookup[name.strip().casefold()] = class_id
        return lookup

    def _unknown_name_message(self, name: str) -> str:
        table = self.id2label
        if not table:
            return (
                f"class name {name!r} cannot be resolved: this pipeline has no id2label; pass integer class ids "
                f"in 0..{self.null_class_id - 1}."
            )
        known = ", ".join(repr(n) for n in list(table.values())[:8])
        more = f", ... ({len(table)} names in all)" if len(table) > 8 else ""
        return f"unknown class name {name!r}; known names: {known}{more}."

    def _latent_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        sample_size = self.transformer.config.sample_size
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        return (batch_size, int(self.transformer.config.in_channels), int(height), int(width))

    def _scheduler_prediction_type(self) -> str:
        """The prediction type the scheduler expects, in this package's names; rejects non-flow schedulers."""
        config = self.scheduler.config
        name = type(self.scheduler).__name__
        if "use_flow_sigmas" in config and not config["use_flow_sigmas"]:
            raise ValueError(
                f"{name} is not in flow mode; create it with use_flow_sigmas=True, "
                'prediction_type="flow_prediction" (e.g. via from_config(config, use_flow_sigmas=True, ...)).'
            )
        prediction_type = config.get("prediction_type", "velocity")
        prediction_type = _SCHEDULER_PREDICTION_ALIASES.get(prediction_type, prediction_type)
        if prediction_type not in flow.PREDICTION_TYPES:
            raise ValueError(
                f"{name} has prediction_type={config.get('prediction_type')!r}, which is not a flow prediction; "
                f'allowed: {", ".join(flow.PREDICTION_TYPES)} (or "flow_prediction").'
            )
        return prediction_type

    def check_inputs(
        self,
        class_ids: list[int],
        num_inference_steps: int,
        guidance_scale: float,
        guidance_interval: tuple[float, float] | None,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        sigmas: Sequence[float] | None,
        mu: float | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> None:
        """Validate the arguments of a call before any work is done.

        Args:
            class_ids: The resolved class ids (their number is the batch size).
            num_inference_steps: Number of sampling steps.
            guidance_scale: Classifier-free guidance scale.
            guidance_interval: ``(lo, hi)`` noise-level range where guidance applies, or ``None``.
            generator: Random generator(s).
            latents: Optional initial noise.
            sigmas: Optional explicit noise levels.
            mu: Optional dynamic-shift exponent.
            output_type: One of `OUTPUT_TYPES`.
            callback_on_step_end_tensor_inputs: Names of tensors passed to the step-end callback.

        Raises:
            ValueError: Naming the offending value and what is allowed.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"output_type={output_type!r} is not supported; allowed: {', '.join(OUTPUT_TYPES)}."
            )
        if sigmas is None and (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, (int, np.integer))
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer >= 1.")
        self._checked_guidance_scale(guidance_scale)
        if guidance_interval is not None:
            try:
                low, high = (float(v) for v in guidance_interval)
            except (TypeError, ValueError):
                raise ValueError(
                    f"guidance_interval={guidance_interval!r} must be a pair (low, high) of noise levels."
                ) from None
            if not (0.0 <= low <= high) or math.isnan(high):
                raise ValueError(
                    f"guidance_interval={guidance_interval!r} must satisfy 0 <= low <= high (noise levels, 1 = noise)."
                )
        batch_size = len(class_ids)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got a list of {len(generator)} generators for {batch_size} class labels; pass one per label "
                "or a single generator."
            )
        if latents is not None:
            expected = self._latent_shape(batch_size)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
                shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(
                    f"latents has shape {shape}; expected {expected} (one per class label, "
                    f"{expected[1]} channels, {expected[2]}x{expected[3]})."
                )
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; allowed: {self._callback_tensor_inputs}."
            )
        accepted = _accepted_parameters(self.scheduler.set_timesteps)
        for name, value in (("sigmas", sigmas), ("mu", mu)):
            if value is not None and name not in accepted and "*" not in accepted:
                raise ValueError(
                    f"{name} was given but {type(self.scheduler).__name__}.set_timesteps does not accept {name}."
                )
        scheduler_prediction = self._scheduler_prediction_type()
        model_prediction = flow.check_prediction_type(
            getattr(self.transformer.config, "prediction_type", None) or "velocity"
        )
        # A model of our path hands its output to the scheduler as it is; one of another path goes through
        # the path mapping, which produces whatever the scheduler expects.
        if self.path.name == "linear" and model_prediction != scheduler_prediction:
            raise ValueError(
                f"The transformer predicts {model_prediction!r} but {type(self.scheduler).__name__} expects "
                f"{scheduler_prediction!r}; use a scheduler configured with prediction_type={model_prediction!r}."
            )

    # ----------------------------------------------------------------------------- sampling pieces
    def _set_timesteps(
        self, num_inference_steps: int, sigmas: Sequence[float] | None, mu: float | None, device
    ) -> None:
        """Call ``scheduler.set_timesteps`` with only the arguments its signature takes."""
        accepted = _accepted_parameters(self.scheduler.set_timesteps)
        kwargs: dict[str, Any] = {"device": device}
        if sigmas is not None:
            kwargs["sigmas"] = list(sigmas)
        else:
            kwargs["num_inference_steps"] = int(num_inference_steps)
        if mu is None and self.scheduler.config.get("use_dynamic_shifting", False) and "mu" in accepted:
            mu = self._default_mu()
        if mu is not None:
            kwargs["mu"] = float(mu)
        self.scheduler.set_timesteps(**kwargs)

    def _default_mu(self) -> float:
        """FLUX-style shift exponent from the number of transformer tokens, for dynamically shifted schedulers."""
        config = {
            **_DYNAMIC_SHIFT_DEFAULTS,
            **{k: v for k, v in self.scheduler.config.items() if k in _DYNAMIC_SHIFT_DEFAULTS},
        }
        _, _, height, width = self._latent_shape(1)
        patch = int(getattr(self.transformer.config, "patch_size", 1) or 1)
        tokens = (height // patch) * (width // patch)
        slope = (config["max_shift"] - config["base_shift"]) / (
            config["max_image_seq_len"] - config["base_image_seq_len"]
        )
        return tokens * slope + config["base_shift"] - slope * config["base_image_seq_len"]

    def _transformer(
        self,
        latents: torch.Tensor,
        mapping: PathMapping,
        timestep: torch.Tensor,
        class_ids: torch.Tensor,
        labels: _Labels,
    ) -> torch.Tensor:
        """One transformer call, returned in our convention as the scheduler's prediction type.

        The only place that knows the transformer's path: it is called with ``c * x`` at its own timestep,
        any learned-variance channels are dropped, and its output is mapped to our ``(x, sigma)``
        (for a model of our path, all of this is the identity).
        """
        output = self.transformer(
            hidden_states=mapping.model_input(latents).to(labels.model_dtype),
            timestep=timestep.expand(latents.shape[0]),
            class_labels=class_ids,
            return_dict=False,
        )[0]
        channels = latents.shape[1]
        if output.shape[1] != channels:
            output = output[:, :channels]
        return mapping.to_flow(
            output.to(latents.dtype), latents, labels.model_prediction, labels.scheduler_prediction
        )

    def _model_output(
        self,
        latents: torch.Tensor,
        mapping: PathMapping,
        timestep: torch.Tensor,
        labels: _Labels,
        guidance_scale: float,
        guided: bool,
    ) -> torch.Tensor:
        """The (guided) prediction at one noise level: one transformer call of B or, with guidance, 2B."""
        if not guided or guidance_scale == 1.0:
            return self._transformer(latents, mapping, timestep, labels.cond, labels)
        if guidance_scale == 0.0:
            return self._transformer(latents, mapping, timestep, labels.null, labels)
        cond, uncond = self._transformer(
            torch.cat([latents, latents]), mapping, timestep, labels.both, labels
        ).chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def _decode(self, latents: torch.Tensor, output_type: str) -> torch.Tensor | np.ndarray | list:
        if output_type == "latent":
            return latents
        images = latents
        if self.vae is not None:
            shift_factor = getattr(self.vae.config, "shift_factor", None) or 0.0
            images = latents / self.vae.config.scaling_factor + shift_factor
            images = self.vae.decode(images.to(self.vae.dtype), return_dict=False)[0]
        return self.image_processor.postprocess(images.float(), output_type=output_type)

    # ----------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        guidance_interval: tuple[float, float] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate one image per class label.

        Args:
            class_labels: A class id, a class name (looked up in ``id2label``; a string is one name), or a
                list / 1-d tensor of them; one image per entry.
            num_inference_steps: Sampling steps (a Heun-type scheduler makes about two model evaluations
                per step). Ignored when ``sigmas`` is given.
            guidance_scale: Classifier-free guidance scale ``s`` in ``uncond + s * (cond - uncond)``;
                1 disables guidance (no unconditional evaluation), 0 samples unconditionally.
            generator: A ``torch.Generator``, or one per label so that each image is reproducible on its
                own (the same image alone or in a batch).
            latents: Initial noise of shape ``(batch, in_channels, height, width)``; drawn from
                ``generator`` if not given.
            output_type: ``"pil"``, ``"np"`` (``(B, H, W, C)`` in [0, 1]), ``"pt"`` (``(B, C, H, W)`` in
                [0, 1]) or ``"latent"`` (the final transformer-space tensor, not decoded or rescaled).
            return_dict: Return an ``ImagePipelineOutput`` instead of a tuple.
            callback_on_step_end: Called after every model evaluation as
                ``callback(pipeline, step_index, timestep, callback_kwargs)``; may return a dict whose
                ``"latents"`` replaces the current latents. It can change guidance through
                ``pipeline.guidance_scale`` (or ``pipeline._guidance_scale``, as diffusers' callbacks do) and
                stop sampling by setting ``pipeline._interrupt = True``.
            callback_on_step_end_tensor_inputs: Tensors put in ``callback_kwargs``; only ``"latents"``.
            guidance_interval: ``(low, high)``: apply guidance only where the noise level sigma
                (``timestep / num_train_timesteps``, 1 = noise) satisfies ``low <= sigma <= high``
                (Kynkäänniemi et al., 2024); elsewhere the model is evaluated conditionally only.
                ``None`` guides everywhere.
            sigmas: Explicit noise levels for schedulers whose ``set_timesteps`` accepts them.
            mu: Dynamic-shift exponent for schedulers that accept it; computed from the image size when
                the scheduler has ``use_dynamic_shifting=True`` and none is given.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: Before any work, for an unknown class name, a label out of range, a negative
                guidance scale, fewer than one step, latents of the wrong shape, a non-flow scheduler,
                a scheduler whose prediction type differs from that of a transformer of our (linear)
                path, or a transformer path whose ``a + b`` vanishes at a noise level of the sampling grid.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        class_ids = self.label_ids(class_labels)
        self.check_inputs(
            class_ids,
            num_inference_steps,
            guidance_scale,
            guidance_interval,
            generator,
            latents,
            sigmas,
            mu,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False

        device = self._execution_device
        batch_size = len(class_ids)
        # Integrate in float32 (float64 for a float64 model) whatever precision the transformer runs in.
        model_dtype = self.transformer.dtype
        work_dtype = torch.float64 if model_dtype == torch.float64 else torch.float32
        shape = self._latent_shape(batch_size)
        # At sigma = 1 the flow's sample is the noise itself, and flow models take x_sigma unscaled: neither
        # `init_noise_sigma` (1 wherever a flow scheduler defines it) nor `scale_model_input` (the identity
        # there, absent from diffusers' FlowMatch schedulers) is consulted.
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=work_dtype)
        else:
            latents = latents.to(device=device, dtype=work_dtype)

        cond_ids = torch.tensor(class_ids, device=device, dtype=torch.long)
        null_ids = torch.full_like(cond_ids, self.null_class_id)
        labels = _Labels(
            cond_ids,
            null_ids,
            torch.cat([cond_ids, null_ids]),
            model_dtype,
            getattr(self.transformer.config, "prediction_type", None) or "velocity",
            self._scheduler_prediction_type(),
        )

        self._set_timesteps(num_inference_steps, sigmas, mu, device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        num_train_timesteps = float(self.scheduler.config.get("num_train_timesteps", 1000))
        # One host transfer for the noise levels of all evaluations, not a sync per step.
        call_sigmas = (timesteps.detach().double().cpu() / num_train_timesteps).tolist()
        # Where each noise level lies on the transformer's path, computed on the host before any model call
        # (a path whose a + b vanishes at one of them is rejected here); one transfer for the timesteps.
        path = self.path
        model_time_scale = int(getattr(self.transformer.config, "num_train_timesteps", 1000))
        mappings = [path.mapping(sigma, model_time_scale) for sigma in call_sigmas]
        model_timesteps = torch.tensor(
            [mapping.timestep for mapping in mappings], dtype=torch.float32, device=device
        )
        low, high = (
            (float(v) for v in guidance_interval) if guidance_interval is not None else (-math.inf, math.inf)
        )
        step_kwargs = (
            {"generator": generator} if "generator" in _accepted_parameters(self.scheduler.step) else {}
        )

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                guided = low <= call_sigmas[i] <= high
                model_output = self._model_output(
                    latents, mappings[i], model_timesteps[i], labels, self._guidance_scale, guided
                )
                latents = self.scheduler.step(model_output, t, latents, return_dict=False, **step_kwargs)[0]

                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents).to(device=device, dtype=work_dtype)
                progress_bar.update()

        images = self._decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ----------------------------------------------------------------------------- save / load
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Save the pipeline to a folder atomically: it is written aside and renamed into place.

        A failure part-way leaves an existing folder at ``save_directory`` untouched. The folder's
        ``model_index.json`` names ``flow_pipelines`` as the library of this package's components, and
        ``id2label`` is kept in it.

        Args:
            save_directory: The folder to create or replace.
            safe_serialization: Must be True: weights are written as safetensors only.
            variant: Weight file variant, e.g. ``"fp16"`` (``diffusion_pytorch_model.fp16.safetensors``).
            max_shard_size: Largest weight file before sharding (diffusers' default if None).
            push_to_hub: Afterwards upload the saved folder with `flow_pipelines.hub.push_pipeline_to_hub`.
            **kwargs: Hub options for the upload: ``repo_id`` (default: the folder name), ``token``,
                ``private``, ``commit_message``; anything else goes to ``DiffusionPipeline.save_pretrained``.

        Raises:
            ValueError: If ``safe_serialization`` is False.
        """
        if not safe_serialization:
            raise ValueError(
                "safe_serialization=False is not supported: weights are saved as safetensors only."
            )
        hub_options = {k: kwargs.pop(k) for k in ("token", "private", "commit_message") if k in kwargs}
        repo_id = kwargs.pop("repo_id", None)
        with atomic_directory(save_directory) as staging:
            super().save_pretrained(
                staging,
                safe_serialization=True,
                variant=variant,
                max_shard_size=max_shard_size,
                push_to_hub=False,
                **kwargs,
            )
        if push_to_hub:
            from ..hub import push_pipeline_to_hub

            push_pipeline_to_hub(save_directory, repo_id or Path(save_directory).name, **hub_options)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> FlowPipeline:
        """Load a saved pipeline from a folder or a Hub repo id (``DiffusionPipeline.from_pretrained``).

        Weights are read from safetensors only. A local folder is checked first, so that a missing
        ``model_index.json``, component folder, config or weight file is named in the error.

        Args:
            pretrained_model_name_or_path: A folder written by `save_pretrained`, or a Hub repo id.
            **kwargs: As for ``DiffusionPipeline.from_pretrained`` (``torch_dtype``, ``variant``,
                ``cache_dir``, ``revision``, components to replace, ...).

        Returns:
            The loaded pipeline.

        Raises:
            ValueError: If a local folder lacks a file the pipeline needs.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "use_safetensors=False is not supported: weights are loaded from safetensors only."
            )
        kwargs["use_safetensors"] = True
        if os.path.isdir(pretrained_model_name_or_path):
            check_saved_pipeline(
                pretrained_model_name_or_path, variant=kwargs.get("variant"), skip=set(kwargs)
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


def _component_base(library_name: str, class_name: str) -> type | None:
    """The diffusers base class (``ModelMixin`` or ``SchedulerMixin``) of a component entry, if resolvable."""
    if library_name not in LOADABLE_CLASSES:
        return None
    try:
        component_class = getattr(importlib.import_module(library_name), class_name)
    except (ImportError, AttributeError):
        return None
    for base in (ModelMixin, SchedulerMixin):
        if isinstance(component_class, type) and issubclass(component_class, base):
            return base
    return None


def check_saved_pipeline(
    folder: str | os.PathLike, variant: str | None = None, skip: set[str] | None = None
) -> None:
    """Check that a saved pipeline folder has every file its ``model_index.json`` needs.

    Models need ``config.json`` and safetensors weights (single file or sharded index, plain or of the
    given variant); schedulers need ``scheduler_config.json``.

    Args:
        folder: The saved pipeline folder.
        variant: The weight variant that will be requested, if any.
        skip: Component names not to check (e.g. those passed to ``from_pretrained`` directly).

    Raises:
        ValueError: Naming the first missing file.
    """
    folder = Path(folder)
    index_path = folder / DiffusionPipeline.config_name
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a saved pipeline: {index_path} is missing.")
    with open(index_path, encoding="utf-8") as handle:
        index = json.load(handle)
    for name, entry in index.items():
        if name.startswith("_") or name in (skip or set()) or not isinstance(entry, list) or len(entry) != 2:
            continue
        if entry[0] is None:
            continue
        base = _component_base(*entry)
        if base is None:
            continue
        component = folder / name
        if base is SchedulerMixin:
            required = component / "scheduler_config.json"
            if not required.is_file():
                raise ValueError(f"{folder} lacks {required.relative_to(folder)}, the {name} configuration.")
            continue
        config = component / "config.json"
        if not config.is_file():
            raise ValueError(f"{folder} lacks {config.relative_to(folder)}, the {name} configuration.")
        candidates = [SAFETENSORS_WEIGHTS_NAME, SAFETENSORS_WEIGHTS_NAME + ".index.json"]
        if variant is not None:
            candidates = [_add_variant(c, variant) for c in candidates] + candidates
        if not any((component / c).is_file() for c in candidates):
            raise ValueError(
                f"{folder} lacks the {name} weights: {(component / candidates[0]).relative_to(folder)} is missing "
                f"(looked for {', '.join(candidates)} in {component})."
            )
