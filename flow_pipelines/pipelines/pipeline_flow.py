"""Class-conditional flow-matching sampling with classifier-free guidance, as a diffusers pipeline."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..file_utils import atomic_update, is_weights_file
from ..guidance import GuidedVelocity, check_guidance_interval, check_transformer
from ..models import DiTModel
from ..paths import PREDICTION_TYPES, STRAIGHT_PATH, AffinePath, check_prediction_type
from .call_arguments import (
    OUTPUT_TYPES,
    accepted_parameters,
    check_finite_numbers,
    check_latents,
    check_sampling_guidance_scale,
    dynamic_shift_mu,
)
from .class_labels import ClassLabels, normalize_id2label, resolve_class_labels
from .remote_code import MODULE_FILE, add_module_files, resolve_module_entries
from .saved_folder import check_saved_pipeline


class FlowPipeline(DiffusionPipeline):
    r"""Class-conditional image generation with a flow-matching transformer and classifier-free guidance.

    Sampling integrates the flow from pure noise (sigma = 1) to data (sigma = 0) with any flow scheduler:
    this package's `FlowEulerScheduler`, `FlowHeunScheduler` and `FlowSDEScheduler`, diffusers'
    ``FlowMatchEulerDiscreteScheduler`` and ``FlowMatchHeunDiscreteScheduler``, and
    ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` created with ``use_flow_sigmas=True,
    prediction_type="flow_prediction"``. Guidance is ``uncond + s * (cond - uncond)`` on all channels,
    computed from one batched transformer call of twice the batch; the unconditional class id is
    ``transformer.config.num_classes``.

    The transformer's config alone says what it predicts, on which path and time scale; at each noise level
    the pipeline evaluates :class:`~flow_pipelines.guidance.GuidedVelocity` (which maps the straight path onto
    the transformer's, see :mod:`flow_pipelines.paths`) and hands the scheduler the prediction type its own
    config asks for. A scheduler cannot disagree with the model.

    Without a VAE the transformer works in pixel space (images in [-1, 1]); with one, it works in the
    VAE's latent space and latents are decoded as ``vae.decode(latents / scaling_factor + shift_factor)``.

    Args:
        transformer: The class-conditional `DiTModel` (its output: what its config's ``prediction_type``
            says on its config's ``path``; the velocity on our straight path by default).
        scheduler: A flow scheduler (see above).
        vae: Optional ``AutoencoderKL`` whose ``latent_channels`` equal the transformer's ``in_channels``.
        id2label: Optional class names by id; kept in the pipeline config so that it survives save/load.

    Raises:
        ValueError: If the VAE's latent channels differ from the transformer's input channels, the
            transformer's output channels differ from its input channels (other than a learned-variance
            layout of twice as many), its path or prediction type is unknown, or ``id2label`` is malformed.
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
        check_transformer(transformer.config)
        in_channels = transformer.config.in_channels
        if vae is not None and vae.config.latent_channels != in_channels:
            raise ValueError(
                f"The VAE has latent_channels={vae.config.latent_channels} but the transformer has "
                f"in_channels={in_channels}; they must be equal."
            )
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
        self._guidance_scale = check_sampling_guidance_scale(value)

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
    def path(self) -> AffinePath:
        """The path the transformer was trained on (`flow_pipelines.paths`), from its config."""
        return check_transformer(self.transformer.config)

    # ----------------------------------------------------------------------------- input checks
    def label_ids(self, class_labels: ClassLabels) -> list[int]:
        """Resolve class labels (ids and/or names) to integer class ids.

        A name matches an ``id2label`` entry exactly, case-insensitively, or as one of its comma-separated
        synonyms (``"tench, Tinca tinca"`` answers to ``"tench"``). A string is always one name.

        Args:
            class_labels: An id, a name, or a (nested) list, 0-d / 1-d integer tensor or array of them.

        Returns:
            One class id per label.

        Raises:
            ValueError: For an empty list, a name that is not in ``id2label``, an id outside
                ``[0, num_classes)``, or a value that is neither.
        """
        return resolve_class_labels(class_labels, self.id2label, self.null_class_id)

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
        try:
            return check_prediction_type(prediction_type)
        except ValueError:
            raise ValueError(
                f"{name} has prediction_type={prediction_type!r}, which is not a flow prediction; allowed: "
                f'{", ".join(PREDICTION_TYPES)} (or "flow_prediction").'
            ) from None

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
        check_sampling_guidance_scale(guidance_scale)
        check_guidance_interval(guidance_interval)
        if sigmas is not None:
            check_finite_numbers("sigmas", sigmas, 0.0, 1.0)
        if mu is not None:
            check_finite_numbers("mu", mu)
        batch_size = len(class_ids)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got a list of {len(generator)} generators for {batch_size} images; pass one per image (class "
                "label x num_images_per_prompt) or a single generator."
            )
        if latents is not None:
            check_latents(latents, self._latent_shape(batch_size))
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; allowed: {self._callback_tensor_inputs}."
            )
        accepted = accepted_parameters(self.scheduler.set_timesteps)
        for name, value in (("sigmas", sigmas), ("mu", mu)):
            if value is not None and name not in accepted and "*" not in accepted:
                raise ValueError(
                    f"{name} was given but {type(self.scheduler).__name__}.set_timesteps does not accept {name}."
                )
        self._scheduler_prediction_type()

    # ----------------------------------------------------------------------------- sampling pieces
    def _set_timesteps(
        self, num_inference_steps: int, sigmas: Sequence[float] | None, mu: float | None, device
    ) -> None:
        """Call ``scheduler.set_timesteps`` with only the arguments its signature takes."""
        accepted = accepted_parameters(self.scheduler.set_timesteps)
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
        _, _, height, width = self._latent_shape(1)
        patch = int(getattr(self.transformer.config, "patch_size", 1) or 1)
        return dynamic_shift_mu(self.scheduler.config, (height // patch) * (width // patch))

    @staticmethod
    def _warn_if_not_finite(latents: torch.Tensor) -> None:
        """Say which samples ended as NaN / inf, rather than return them as images without a word."""
        bad = (~torch.isfinite(latents)).flatten(1).any(dim=1)
        if bool(bad.any()):
            indices = bad.nonzero().flatten().tolist()
            warnings.warn(
                f"{len(indices)} of {len(bad)} samples are not finite (NaN / inf) after sampling: index "
                f"{', '.join(map(str, indices[:10]))}{' ...' if len(indices) > 10 else ''}. Latents or a guidance "
                "scale changed by a step callback, or a transformer run in too low a precision, make this happen.",
                RuntimeWarning,
                stacklevel=3,
            )

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
        num_images_per_prompt: int = 1,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate ``num_images_per_prompt`` images per class label.

        Args:
            class_labels: A class id, a class name (looked up in ``id2label``; a string is one name), or a
                (nested) list, 0-d / 1-d tensor or array of them, as diffusers' ``DiTPipeline`` takes them.
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
            num_images_per_prompt: Images per class label, side by side in the output (label ``i``'s images are
                entries ``i * n`` to ``i * n + n - 1``); ``generator`` lists and ``latents`` count all images.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: Before any work, for an unknown class name, a label out of range, a guidance scale that
                is negative, not finite or above `MAX_GUIDANCE_SCALE`, fewer than one step, latents of the wrong
                shape or with NaN / inf values, sigmas outside [0, 1] or a non-finite mu, a non-flow scheduler,
                a scheduler whose prediction type is singular on its own grid (epsilon at sigma = 1), or a
                transformer path whose ``a + b`` vanishes at a noise level of the sampling grid.

        Warns:
            RuntimeWarning: Naming the samples that ended NaN or infinite (the finite ones are returned as usual).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, (int, np.integer))
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1.")
        class_ids = [
            class_id for class_id in self.label_ids(class_labels) for _ in range(num_images_per_prompt)
        ]
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
        work_dtype = torch.float64 if self.transformer.dtype == torch.float64 else torch.float32
        shape = self._latent_shape(batch_size)
        # At sigma = 1 the flow's sample is the noise itself, and flow models take x_sigma unscaled: neither
        # `init_noise_sigma` (1 wherever a flow scheduler defines it) nor `scale_model_input` (the identity
        # there, absent from diffusers' FlowMatch schedulers) is consulted.
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=work_dtype)
        else:
            latents = latents.to(device=device, dtype=work_dtype)

        velocity = GuidedVelocity(
            self.transformer,
            torch.tensor(class_ids, device=device, dtype=torch.long),
            self._guidance_scale,
            guidance_interval,
        )
        scheduler_prediction = self._scheduler_prediction_type()

        self._set_timesteps(num_inference_steps, sigmas, mu, device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        num_train_timesteps = float(self.scheduler.config.get("num_train_timesteps", 1000))
        # One host transfer for the noise levels of all evaluations, not a sync per step.
        call_sigmas = (timesteps.detach().double().cpu() / num_train_timesteps).tolist()
        for sigma in call_sigmas:
            # Located on the transformer's path before any model call: a path whose a + b vanishes at one of
            # them is rejected here.
            velocity.point(sigma)
            if STRAIGHT_PATH.is_singular(sigma, scheduler_prediction):
                raise ValueError(
                    f"{type(self.scheduler).__name__} expects prediction_type={scheduler_prediction!r}, which carries "
                    f"no information at the noise level {sigma:g} of its grid (an epsilon prediction says nothing "
                    "about the data at sigma = 1); use a scheduler with prediction_type='velocity'."
                )
        step_kwargs = (
            {"generator": generator} if "generator" in accepted_parameters(self.scheduler.step) else {}
        )

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                # A step-end callback may have changed the guidance scale.
                velocity.guidance_scale = self._guidance_scale
                model_output = STRAIGHT_PATH.convert(
                    velocity(latents, call_sigmas[i]),
                    latents,
                    call_sigmas[i],
                    "velocity",
                    scheduler_prediction,
                )
                latents = self.scheduler.step(model_output, t, latents, return_dict=False, **step_kwargs)[0]

                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents).to(device=device, dtype=work_dtype)
                progress_bar.update()

        self._warn_if_not_finite(latents)
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
        """Save the pipeline into a folder, replacing only what it writes, each part atomically.

        The pipeline is first written completely aside (a hidden folder inside ``save_directory``); nothing in
        ``save_directory`` changes if that fails. Then each component folder it owns (``transformer/``,
        ``scheduler/``, ``vae/``) replaces the previous one as a whole, and ``model_index.json`` is replaced
        last, by a rename: no half-written file or component is ever visible, and a failure part-way leaves
        every file in place complete. Files of the user's are kept, beside the components and inside them;
        only weight files of an earlier save of the same variant (stale shards, the other format) and module files
        are dropped with their component.

        The folder loads with ``FlowPipeline.from_pretrained`` and, through the module files it holds
        (`~flow_pipelines.pipelines.remote_code`), with ``DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)`` and ``AutoModel.from_pretrained(folder, subfolder="transformer",
        trust_remote_code=True)`` in a process that never imported this package. ``id2label`` is kept in
        ``model_index.json``.

        Args:
            save_directory: The folder to create or update (``"."`` works).
            safe_serialization: Write safetensors (default); False writes PyTorch ``.bin`` files as diffusers does
                (they are only ever read back with ``torch.load(weights_only=True)``).
            variant: Weight file variant, e.g. ``"fp16"`` (``diffusion_pytorch_model.fp16.safetensors``).
            max_shard_size: Largest weight file before sharding (diffusers' default if None).
            push_to_hub: Afterwards upload the saved folder with `flow_pipelines.hub.push_pipeline_to_hub`.
            **kwargs: Hub options for the upload: ``repo_id`` (default: the folder name), ``token``,
                ``private``, ``commit_message``; anything else goes to ``DiffusionPipeline.save_pretrained``.

        Raises:
            ValueError: If ``save_directory`` is a file, or one of the names the pipeline writes (a component
                folder, ``model_index.json``) is taken there by an entry of the other kind.
        """
        save_directory = Path(save_directory)
        if save_directory.exists() and not save_directory.is_dir():
            raise ValueError(f"save_directory={str(save_directory)!r} is a file; a folder is needed.")
        hub_options = {k: kwargs.pop(k) for k in ("token", "private", "commit_message") if k in kwargs}
        repo_id = kwargs.pop("repo_id", None)

        def owned(path: PurePosixPath) -> bool:
            # Inside a component folder: weights of the variant being written, in either format, and module files.
            return len(path.parts) == 2 and (is_weights_file(path, variant) or path.name == MODULE_FILE)

        with atomic_update(save_directory, superseded=owned) as staging:
            super().save_pretrained(
                staging,
                safe_serialization=safe_serialization,
                variant=variant,
                max_shard_size=max_shard_size,
                push_to_hub=False,
                **kwargs,
            )
            add_module_files(staging)
        if push_to_hub:
            from ..hub import push_pipeline_to_hub

            push_pipeline_to_hub(save_directory, repo_id or save_directory.resolve().name, **hub_options)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> FlowPipeline:
        """Load a saved pipeline from a folder or a Hub repo id (``DiffusionPipeline.from_pretrained``).

        The folder's module files are not run: this package's classes they name are loaded from the installed
        package, so no ``trust_remote_code`` is needed. Weights are read from safetensors, else from ``.bin``
        files with ``torch.load(weights_only=True)`` (``use_safetensors=True`` / ``False`` picks one). A local
        folder is checked first, so that a missing ``model_index.json``, component folder, config or weight file
        is named in the error.

        Args:
            pretrained_model_name_or_path: A folder written by `save_pretrained`, or a Hub repo id.
            **kwargs: As for ``DiffusionPipeline.from_pretrained`` (``dtype`` / ``torch_dtype`` as one dtype or a
                ``{component: dtype, "default": dtype}`` dict, ``variant``, ``use_safetensors``, ``cache_dir``,
                ``revision``, components to replace, ...).

        Returns:
            The loaded pipeline.

        Raises:
            ValueError: If a local folder lacks a file the pipeline needs, or (diffusers' message) no component has
                the requested ``variant``.
        """
        if os.path.isdir(pretrained_model_name_or_path):
            formats = check_saved_pipeline(
                pretrained_model_name_or_path,
                variant=kwargs.get("variant"),
                skip=set(kwargs),
                use_safetensors=kwargs.get("use_safetensors"),
            )
            if formats == {"bin"}:
                # Only .bin weights: said up front, diffusers does not log a failed safetensors lookup per model.
                kwargs.setdefault("use_safetensors", False)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        """Read ``model_index.json`` with the module-file entries naming this package's classes resolved.

        Used by diffusers' ``load_config`` and ``download`` on this class only, so that ``FlowPipeline.from_pretrained``
        loads the installed classes (`resolve_module_entries`).

        Args:
            json_file: The file.

        Returns:
            Its content.
        """
        return resolve_module_entries(super()._dict_from_json_file(json_file))

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> tuple:
        """diffusers' config reading, without ``auto_map`` (for ``AutoModel``, not an argument of the pipeline).

        Args:
            config_dict: The loaded ``model_index.json``.
            **kwargs: As for ``ConfigMixin.extract_init_dict``.

        Returns:
            What ``ConfigMixin.extract_init_dict`` returns.
        """
        return super().extract_init_dict({k: v for k, v in config_dict.items() if k != "auto_map"}, **kwargs)
