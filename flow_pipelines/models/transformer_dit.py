"""A class-conditional Diffusion Transformer (DiT, Peebles & Xie 2023) as a diffusers model.

The model follows the DiT paper: patch embedding, fixed 2-D sin-cos positions (or 2-D rotary
embeddings), a timestep embedder and a label embedder summed once per forward into the conditioning
vector ``c``, blocks with adaLN-Zero modulation (shift / scale / gate from ``c``), a final adaLN
layer and unpatchify. The label table has ``num_classes + 1`` rows; the last row, id
``num_classes``, is the null class used for classifier-free guidance.

What the model predicts, and where: the config's ``path`` / ``path_kwargs`` name the affine path
``x_t = a(t) x0 + b(t) noise`` it is trained on (:mod:`flow_pipelines.paths`: ``"linear"``, the straight path
``x_sigma = (1 - sigma) x0 + sigma noise``, by default; ``"cosine"``; ``"vp"``; any of them with
``reverse_time``), ``num_train_timesteps`` its time scale (it is called with ``t * num_train_timesteps``) and
``prediction_type`` its output (the velocity ``dx_t/dt`` by default, or the sample or the noise). The forward is
the same for every path; samplers map our ``(x, sigma)`` onto it (:class:`flow_pipelines.guidance.GuidedVelocity`).
Converted checkpoints say so in the same keys: SiT's weights are a velocity model on the reversed linear path
with time scale 1, the original DiT's an epsilon model on the VP path whose ``out_channels = 2 * in_channels``
carry a learned variance in their second half.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.model_loading_utils import load_state_dict
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..file_utils import atomic_update, is_weights_file
from ..paths import check_prediction_type, get_path
from .dit_attention import (
    LEGACY_ATTENTION_KEY_PATTERN as _LEGACY_KEY_PATTERN,
)
from .dit_attention import (
    QK_NORM_TYPES,
    DiTAttention,
    DiTAttnProcessor,
    upgrade_legacy_attention_keys,
)
from .dit_layers import DiTBlock, FinalLayer
from .embeddings import LabelEmbedder, TimestepEmbedder, rope_2d_frequencies, sincos_2d_positions

POS_EMBED_TYPES: tuple[str, ...] = ("sincos", "rope")

_POSITIVE_INTEGERS: tuple[str, ...] = (
    "sample_size",
    "patch_size",
    "in_channels",
    "out_channels",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "num_classes",
    "num_train_timesteps",
    "timestep_embedding_dim",
)

# Width, depth and heads of the DiT paper's model sizes; every size comes with patch 2, 4 and 8.
_SIZES: dict[str, dict[str, int]] = {
    "S": {"hidden_size": 384, "num_layers": 12, "num_attention_heads": 6},
    "B": {"hidden_size": 768, "num_layers": 12, "num_attention_heads": 12},
    "L": {"hidden_size": 1024, "num_layers": 24, "num_attention_heads": 16},
    "XL": {"hidden_size": 1152, "num_layers": 28, "num_attention_heads": 16},
}

DIT_PRESETS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{patch}": {**dims, "patch_size": patch}
    for size, dims in _SIZES.items()
    for patch in (2, 4, 8)
}
"""Architecture presets of the DiT paper, ``"DiT-S/2"`` … ``"DiT-XL/8"``: width, depth, heads, patch."""


class DiTModel(ModelMixin, AttentionMixin, ConfigMixin):
    r"""Class-conditional Diffusion Transformer (DiT), by default predicting the flow velocity ``noise - x0``.

    The conditioning vector ``c = time_embed(t) + label_embed(y)`` is computed once per forward and
    drives adaLN-Zero in every block. A fresh model outputs exactly zero (modulations and the output
    projection are zero-initialised, as in DiT). Inputs of any spatial size divisible by the patch
    size are accepted: sin-cos positions are computed for the actual grid (integer patch positions,
    cached per size), rotary ones likewise.

    Args:
        sample_size: Side of the (latent) images the model is trained at.
        patch_size: Patch side.
        in_channels: Input channels.
        out_channels: Output channels; defaults to ``in_channels`` (``2 * in_channels`` is the original
            DiT's learned-sigma output, whose second half samplers drop).
        hidden_size: Token width.
        num_layers: Number of transformer blocks.
        num_attention_heads: Attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP inner width over ``hidden_size``.
        num_classes: Number of real classes; label id ``num_classes`` is the null class for
            classifier-free guidance, so the label table has ``num_classes + 1`` rows.
        num_train_timesteps: The time scale: the model is called with ``t * num_train_timesteps`` (``t = sigma`` on
            the straight path).
        pos_embed: ``"sincos"`` (fixed absolute 2-D sin-cos, as DiT) or ``"rope"`` (2-D rotary in attention).
        qk_norm: ``None``, ``"rms_norm"`` or ``"layer_norm"`` on queries and keys.
        rope_theta: Rotary base for ``pos_embed="rope"``.
        prediction_type: What the output is, on the model's path: ``"velocity"`` (default), ``"sample"`` or
            ``"epsilon"``.
        timestep_embedding_dim: Width of the sinusoidal timestep features.
        timestep_frequency_shift: 0 as in DiT; 1 reproduces diffusers' ``DiTTransformer2DModel`` embedding.
        norm_eps: Epsilon of the pre-attention and final LayerNorms.
        mlp_norm_eps: Epsilon of the pre-MLP LayerNorm; ``None`` means ``norm_eps`` (diffusers' DiT uses 1e-5).
        path: The path the model is trained on: ``"linear"`` (default), ``"cosine"`` or ``"vp"``; see
            `flow_pipelines.paths.get_path`.
        path_kwargs: The path's parameters, e.g. ``{"beta_min": 0.1, "beta_max": 20.0}`` for ``"vp"``, or
            ``{"reverse_time": true}`` for time running from noise to data (SiT).

    Raises:
        ValueError: For inconsistent sizes (a ``sample_size`` not divisible by ``patch_size``, heads not
            dividing the width), sizes or epsilons that are not positive and finite, or unknown option names.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiTBlock"]
    _repeated_blocks = ["DiTBlock"]
    # Layers kept in the compute dtype under diffusers' layerwise casting: the input projection,
    # the conditioning embedders and every norm (q/k norms included).
    _skip_layerwise_casting_patterns = ["patch_embed", "time_embed", "label_embed", "norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        out_channels: int | None = None,
        hidden_size: int = 1152,
        num_layers: int = 28,
        num_attention_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        num_train_timesteps: int = 1000,
        pos_embed: str = "sincos",
        qk_norm: str | None = None,
        rope_theta: float = 10000.0,
        prediction_type: str = "velocity",
        timestep_embedding_dim: int = 256,
        timestep_frequency_shift: int = 0,
        norm_eps: float = 1e-6,
        mlp_norm_eps: float | None = None,
        path: str = "linear",
        path_kwargs: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if out_channels is None:
            out_channels = in_channels
            self.register_to_config(out_channels=out_channels)
        _check_positive(self.config, _POSITIVE_INTEGERS)
        if sample_size % patch_size:
            raise ValueError(
                f"sample_size={sample_size} is not divisible by patch_size={patch_size}; allowed: a sample size "
                f"that is a multiple of {patch_size} (the image is cut into patch_size x patch_size patches)."
            )
        _check_positive_number("mlp_ratio", mlp_ratio)
        _check_positive_number("rope_theta", rope_theta)
        _check_positive_number("norm_eps", norm_eps)
        if mlp_norm_eps is not None:
            _check_positive_number("mlp_norm_eps", mlp_norm_eps)
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}; "
                f"allowed: a head count dividing {hidden_size}."
            )
        if pos_embed not in POS_EMBED_TYPES:
            raise ValueError(
                f"pos_embed={pos_embed!r} is not supported; allowed: {', '.join(POS_EMBED_TYPES)}."
            )
        if qk_norm is not None and qk_norm not in QK_NORM_TYPES:
            raise ValueError(
                f"qk_norm={qk_norm!r} is not supported; allowed: None, {', '.join(QK_NORM_TYPES)}."
            )
        check_prediction_type(prediction_type)
        if path_kwargs is not None and not isinstance(path_kwargs, dict):
            raise ValueError(f"path_kwargs={path_kwargs!r} must be a dict of the path's parameters or None.")
        get_path(path, **(path_kwargs or {}))
        head_dim = hidden_size // num_attention_heads
        if pos_embed == "sincos" and hidden_size % 4:
            raise ValueError(f"pos_embed='sincos' needs hidden_size divisible by 4; got {hidden_size}.")
        if pos_embed == "rope" and head_dim % 4:
            raise ValueError(
                f"pos_embed='rope' needs a head dimension (hidden_size / num_attention_heads) divisible by 4; "
                f"got {head_dim}."
            )
        if timestep_frequency_shift not in (0, 1):
            raise ValueError(f"timestep_frequency_shift must be 0 or 1; got {timestep_frequency_shift}.")

        # Plain attributes read in forward: cheaper than the config and transparent to torch.compile.
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.num_train_timesteps = num_train_timesteps
        self.use_rope = pos_embed == "rope"
        self.rope_theta = rope_theta
        self.head_dim = head_dim
        self.gradient_checkpointing = False
        self._position_cache: dict[tuple[Any, ...], torch.Tensor] = {}

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.time_embed = TimestepEmbedder(hidden_size, timestep_embedding_dim, timestep_frequency_shift)
        self.label_embed = LabelEmbedder(num_classes, hidden_size)
        self.blocks = nn.ModuleList(
            [
                DiTBlock(
                    hidden_size,
                    num_attention_heads,
                    mlp_ratio,
                    qk_norm=qk_norm,
                    norm_eps=norm_eps,
                    mlp_norm_eps=norm_eps if mlp_norm_eps is None else mlp_norm_eps,
                    uses_rope=pos_embed == "rope",
                )
                for _ in range(num_layers)
            ]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels, eps=norm_eps)
        self._initialize_weights()
        # Weights saved before the attention used diffusers' names load through torch's load_state_dict too
        # (training checkpoints, EMA copies); diffusers' loader is covered in `_load_pretrained_model`.
        self._register_load_state_dict_pre_hook(_upgrade_legacy_keys_hook, with_module=True)

    def _initialize_weights(self) -> None:
        """DiT's initialisation: Xavier linears, N(0, 0.02) embedders, zeroed adaLN and output projection."""
        projections: set[int] = set()
        for module in self.modules():
            if isinstance(module, DiTAttention):
                # DiT's q, k, v are one (3 hidden x hidden) layer: Xavier's bound counts all three outputs. Drawn
                # in order q, k, v, the values are those of the fused layer.
                bound = math.sqrt(6.0 / (4 * module.inner_dim))
                for layer in (module.to_q, module.to_k, module.to_v):
                    nn.init.uniform_(layer.weight, -bound, bound)
                    nn.init.zeros_(layer.bias)
                    projections.add(id(layer))
            elif isinstance(module, nn.Linear) and id(module) not in projections:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch embedding is a linear map over flattened patches.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.label_embed.embedding_table.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation.weight)
            nn.init.zeros_(block.modulation.bias)
        for layer in (self.final_layer.modulation, self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> tuple:
        """diffusers' config reading, with configs saved before paths carried the time direction brought up to date.

        Such configs name a ``time_convention``: ``"sit"`` (SiT's weights, whose forward then mapped the time and
        negated the output) is the reversed linear path with time scale 1; ``"ddpm"`` and ``"flow"`` already
        name their path.

        Args:
            config_dict: The loaded config.
            **kwargs: Overrides, as for ``ConfigMixin.extract_init_dict``.

        Returns:
            What ``ConfigMixin.extract_init_dict`` returns.
        """
        config_dict = dict(config_dict)
        if config_dict.pop("time_convention", None) == "sit":
            config_dict.update(path="linear", path_kwargs={"reverse_time": True}, num_train_timesteps=1)
        return super().extract_init_dict(config_dict, **kwargs)

    def set_default_attn_processor(self) -> None:
        """Give every attention layer a new `DiTAttnProcessor` (the processor a fresh model has).

        For diffusers' other models the default is ``AttnProcessor``; ours computes q/k norm and RoPE as well, and
        runs on diffusers' attention backend dispatch.
        """
        self.set_attn_processor({name: DiTAttnProcessor() for name in self.attn_processors})

    @classmethod
    def _load_pretrained_model(
        cls,
        model: DiTModel,
        state_dict: dict[str, torch.Tensor] | None,
        resolved_model_file: list[str],
        pretrained_model_name_or_path: str | os.PathLike,
        loaded_keys: list[str],
        *args: Any,
        **kwargs: Any,
    ) -> tuple:
        """diffusers' weight loading, with weights saved before the attention used diffusers' names renamed first.

        Such weights (``attn.qkv``, ``attn.proj``; see `upgrade_legacy_attention_keys`) are read whole, from every
        shard, renamed, and handed on as one state dict; current weights go through unchanged.

        Args:
            model: The model being loaded.
            state_dict: The weights of an unsharded checkpoint, or None (read from ``resolved_model_file``).
            resolved_model_file: The weight files.
            pretrained_model_name_or_path: Where they come from.
            loaded_keys: The keys the files hold.
            *args: Passed on to ``ModelMixin._load_pretrained_model``.
            **kwargs: Passed on to ``ModelMixin._load_pretrained_model``.

        Returns:
            What ``ModelMixin._load_pretrained_model`` returns.
        """
        pattern = re.compile(_LEGACY_KEY_PATTERN)
        if any(pattern.fullmatch(key) for key in loaded_keys):
            if state_dict is None:
                state_dict = {}
                for file in resolved_model_file:
                    state_dict.update(load_state_dict(file))
            upgrade_legacy_attention_keys(state_dict)
            loaded_keys = list(state_dict)
        return super()._load_pretrained_model(
            model,
            state_dict,
            resolved_model_file,
            pretrained_model_name_or_path,
            loaded_keys,
            *args,
            **kwargs,
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        **kwargs: Any,
    ) -> None:
        """diffusers' ``save_pretrained``, atomically: each file appears whole or not at all, the user's stay.

        The model is written into a staging folder and each file renamed into place
        (:func:`~flow_pipelines.file_utils.atomic_update`); stale weight files of the same variant are replaced,
        other files in the folder are kept. The parameters diffusers' pipelines look for in the signature
        (``safe_serialization``, ``variant``, ``max_shard_size``) are named here.

        Args:
            save_directory: The folder to write.
            safe_serialization: Write safetensors (False: ``.bin``, as diffusers does).
            variant: Weight file variant, e.g. ``"fp16"``.
            max_shard_size: Largest weight file before sharding.
            **kwargs: Anything else ``ModelMixin.save_pretrained`` takes.
        """
        settings = {
            "safe_serialization": safe_serialization,
            "variant": variant,
            "max_shard_size": max_shard_size,
        }
        with atomic_update(save_directory, lambda path: is_weights_file(path, variant)) as staging:
            super().save_pretrained(staging, **settings, **kwargs)

    @staticmethod
    def presets() -> list[str]:
        """Names accepted by :meth:`from_preset`: ``"DiT-S/2"`` … ``"DiT-XL/8"``.

        Returns:
            The preset names.
        """
        return list(DIT_PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DiTModel:
        """Build a freshly initialised model of a DiT paper size.

        Defaults besides the preset's width, depth, heads and patch: 32×32×4 latents (256 px with the
        SD VAE), 1000 classes, ``out_channels = in_channels`` (a velocity model; pass
        ``out_channels=8`` for the paper's learned-sigma layout).

        Args:
            name: A preset name, e.g. ``"DiT-XL/2"``; see :meth:`presets`.
            **overrides: Any config argument, applied over the preset.

        Returns:
            The model.

        Raises:
            ValueError: For an unknown preset name (the message lists the known ones).
        """
        if name not in DIT_PRESETS:
            raise ValueError(f"Unknown DiT preset {name!r}; known presets: {', '.join(DIT_PRESETS)}.")
        return cls(**{**DIT_PRESETS[name], **overrides})

    @property
    def null_class_id(self) -> int:
        """The label id of the null (unconditional) class: ``config.num_classes``."""
        return self.num_classes

    def _positions(self, grid_height: int, grid_width: int, device: torch.device) -> torch.Tensor:
        """Sin-cos table ``(tokens, hidden)`` or rotary table ``(2, tokens, head_dim)`` for a patch grid."""
        if self.use_rope:

            def build() -> torch.Tensor:
                return rope_2d_frequencies(self.head_dim, grid_height, grid_width, self.rope_theta, device)
        else:

            def build() -> torch.Tensor:
                return sincos_2d_positions(self.hidden_size, grid_height, grid_width, device)

        if torch.compiler.is_compiling():
            # Traced into the graph instead of touching the Python-side cache.
            return build()
        key = (grid_height, grid_width, device)
        table = self._position_cache.get(key)
        if table is None:
            table = self._position_cache[key] = build()
        return table

    def _prepare_conditioning(
        self,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | list[int] | int | None,
        batch: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and broadcast the timestep and labels to ``(batch,)`` tensors on ``device``."""
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.ndim == 0 or timestep.numel() == 1:
            timestep = timestep.reshape(1).expand(batch)
        elif timestep.shape != (batch,):
            raise ValueError(
                f"timestep has shape {tuple(timestep.shape)}; allowed: a scalar or one value per sample ({batch},)."
            )
        # Checked where it costs no device sync, as the label range below.
        if (
            not torch.compiler.is_compiling()
            and timestep.device.type == "cpu"
            and timestep.is_floating_point()
        ):
            if not bool(torch.isfinite(timestep).all()):
                raise ValueError(
                    f"timestep has NaN or infinite values ({timestep.tolist()}); allowed: finite times."
                )
        if class_labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            labels = torch.as_tensor(class_labels)
            if labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"class_labels must be integers; got dtype {labels.dtype}.")
            if labels.ndim == 0 or labels.numel() == 1:
                labels = labels.reshape(1).expand(batch)
            elif labels.shape != (batch,):
                raise ValueError(
                    f"class_labels has shape {tuple(labels.shape)}; allowed: a scalar or one label per sample ({batch},)."
                )
            # Range check where it costs no device sync; on an accelerator an out-of-range id trips the
            # embedding kernel's own assertion instead.
            if not torch.compiler.is_compiling() and labels.device.type == "cpu":
                low, high = int(labels.min()), int(labels.max())
                if low < 0 or high > self.num_classes:
                    bad = low if low < 0 else high
                    raise ValueError(
                        f"class label {bad} is out of range; allowed: [0, {self.num_classes}] "
                        f"({self.num_classes} is the null class)."
                    )
            labels = labels.to(device=device, dtype=torch.long)
        return timestep, labels

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | list[int] | int | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the model output for a noisy batch.

        Args:
            hidden_states: Noisy (latent) images ``(batch, in_channels, height, width)``; height and width
                divisible by ``patch_size``.
            timestep: ``t * num_train_timesteps`` as a float (fractional values allowed; ``t = sigma`` on the
                straight path): a Python number, a 0-d tensor or one value per sample.
            class_labels: Integer labels in ``[0, num_classes]``, one per sample (or one for all);
                ``num_classes`` is the null class. ``None`` means the null class for the whole batch.
            return_dict: Return a ``Transformer2DModelOutput`` rather than a tuple.

        Returns:
            ``Transformer2DModelOutput(sample=...)`` with ``sample`` of shape
            ``(batch, out_channels, height, width)``, or ``(sample,)`` when ``return_dict`` is False.

        Raises:
            ValueError: For a wrong input rank or channel count, a size not divisible by the patch size,
                badly shaped timesteps or labels, or NaN / inf timesteps and labels outside ``[0, num_classes]``
                (both checked for CPU tensors outside ``torch.compile``).
        """
        if hidden_states.ndim != 4:
            raise ValueError(
                f"hidden_states must be (batch, channels, height, width); got shape {tuple(hidden_states.shape)}."
            )
        batch, channels, height, width = hidden_states.shape
        if channels != self.in_channels:
            raise ValueError(
                f"hidden_states has {channels} channels; allowed: in_channels={self.in_channels}."
            )
        patch = self.patch_size
        if height % patch or width % patch:
            raise ValueError(
                f"input size {height}x{width} is not divisible by patch_size={patch}; "
                f"allowed: height and width multiples of {patch}."
            )
        grid_height, grid_width = height // patch, width // patch
        device = hidden_states.device
        timestep, labels = self._prepare_conditioning(timestep, class_labels, batch, device)

        x = self.patch_embed(hidden_states).flatten(2).transpose(1, 2)
        positions = self._positions(grid_height, grid_width, device)
        if self.use_rope:
            rope = positions
        else:
            rope = None
            x = x + positions.to(self.patch_embed.weight.dtype)

        condition = self.time_embed(timestep) + self.label_embed(labels)
        # Every adaLN modulation starts with SiLU(c): apply it once for all blocks.
        activated_condition = F.silu(condition)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, activated_condition, rope)
            else:
                x = block(x, activated_condition, rope)
        x = self.final_layer(x, activated_condition)

        # Unpatchify: (batch, tokens, p * p * c) -> (batch, c, height, width).
        x = x.view(batch, grid_height, grid_width, patch, patch, self.out_channels)
        sample = x.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.out_channels, height, width)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)


def _upgrade_legacy_keys_hook(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any
) -> None:
    """Load-state-dict pre-hook: rename attention weights saved before the diffusers layout (in place)."""
    upgrade_legacy_attention_keys(state_dict, prefix)


def _check_positive_number(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (a NaN or 0 here gives NaN outputs)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a finite number > 0.")


def _check_positive(config: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the first config entry that is not a positive integer."""
    for name in names:
        value = config[name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
