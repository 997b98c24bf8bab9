"""DiT self-attention as a diffusers attention module: processors, fused q/k/v, attention backends.

`DiTAttention` holds diffusers' parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``norm_q``,
``norm_k``) and computes nothing itself: its ``processor`` does, as in every diffusers attention module, so that
``DiTModel.attn_processors`` / ``set_attn_processor`` / ``fuse_qkv_projections`` / ``set_attention_backend`` work on
it. The default `DiTAttnProcessor` applies the optional q/k norm and 2-D rotary embedding and hands the attention
itself to diffusers' backend dispatch (``dispatch_attention_fn``): PyTorch's SDPA by default, FlashAttention,
SageAttention, xformers and the others once selected with ``model.set_attention_backend(name)`` or the
``attention_backend(name)`` context manager.

Folders and checkpoints saved before the attention followed diffusers' names hold one fused ``attn.qkv`` and an
``attn.proj`` per block; :func:`upgrade_legacy_attention_keys` renames them, and `DiTModel` applies it to every state
dict it loads.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import MutableMapping

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from .embeddings import apply_rope

QK_NORM_TYPES: tuple[str, ...] = ("rms_norm", "layer_norm")

LEGACY_ATTENTION_KEY_PATTERN = r"(?P<attention>blocks\.\d+\.attn\.)(?:qkv|proj)\.(?:weight|bias)"
"""A `DiTModel` attention weight saved before the diffusers layout: ``blocks.N.attn.{qkv,proj}.{weight,bias}``."""


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension with a learned scale (computed in float32).

    Args:
        dim: The normalised width.
        eps: Added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x``; returns a tensor of ``x``'s dtype."""
        x_float = x.float()
        x_float = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x_float * self.weight.float()).to(x.dtype)


class DiTAttnProcessor:
    """The attention of a `DiTAttention`: projections, q/k norm, 2-D RoPE, then diffusers' attention dispatch.

    Queries, keys and values are computed from the fused ``to_qkv`` once ``fuse_projections`` has made it, from
    ``to_q`` / ``to_k`` / ``to_v`` otherwise. The attention runs on the backend set on this processor
    (``_attention_backend``, set by ``set_attention_backend``), else on diffusers' active backend (native SDPA
    unless ``attention_backend(...)`` or ``DIFFUSERS_ATTN_BACKEND`` says otherwise).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self, attn: DiTAttention, hidden_states: torch.Tensor, rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend over the tokens of ``hidden_states``.

        Args:
            attn: The attention module whose weights are used.
            hidden_states: Tokens ``(batch, tokens, hidden)``.
            rope: Rotary tables ``(2, tokens, head_dim)`` from
                :func:`~flow_pipelines.models.embeddings.rope_2d_frequencies`, or None.

        Returns:
            The attention output ``(batch, tokens, hidden)``.
        """
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        # (batch, tokens, heads, head_dim): the layout the dispatch takes.
        heads = (attn.heads, attn.head_dim)
        query, key, value = query.unflatten(-1, heads), key.unflatten(-1, heads), value.unflatten(-1, heads)
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if rope is not None:
            rope = rope.unsqueeze(2)  # one table for every head
            query, key = apply_rope(query, rope), apply_rope(key, rope)
        out = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        # to_out[1] is diffusers' dropout slot, p = 0 here: skipped.
        return attn.to_out[0](out.flatten(2).to(query.dtype))


def takes_rope(processor: object) -> bool:
    """Whether an attention processor's call takes the rotary tables (``rope``), as processors written for DiT do.

    Args:
        processor: A callable processor.

    Returns:
        True if ``processor(attn, hidden_states, rope=...)`` is accepted.
    """
    try:
        parameters = inspect.signature(processor).parameters
    except (TypeError, ValueError):
        return False
    return "rope" in parameters


class DiTAttention(nn.Module, AttentionModuleMixin):
    """Multi-head self-attention of a DiT block, with optional q/k norm and 2-D RoPE, computed by a processor.

    The layout is diffusers' (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``norm_q``, ``norm_k``), so LoRA targets,
    ``fuse_projections`` (one ``to_qkv`` matmul instead of three) and diffusers' generic processors apply. Those
    generic processors (``AttnProcessor2_0``, ...) know neither RoPE nor the q/k norms: a module that uses either
    accepts only processors that take ``rope``, as `DiTAttnProcessor` does.

    Args:
        hidden_size: Token width.
        num_heads: Number of heads (must divide ``hidden_size``).
        qk_norm: ``None``, ``"rms_norm"`` or ``"layer_norm"``: per-head normalisation of queries and keys.
        eps: Epsilon of the q/k norms.
        uses_rope: Whether the model passes 2-D rotary tables to ``forward``.
        processor: The processor; a new `DiTAttnProcessor` by default.

    Raises:
        ValueError: For a head count that does not divide the width, an unknown ``qk_norm``, or a processor that
            cannot apply what this module needs (see above).
    """

    _default_processor_cls = DiTAttnProcessor
    _available_processors = [DiTAttnProcessor]
    _supports_qkv_fusion = True

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        qk_norm: str | None = None,
        eps: float = 1e-6,
        uses_rope: bool = False,
        processor: object | None = None,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; allowed: a head count "
                f"dividing {hidden_size}."
            )
        if qk_norm is not None and qk_norm not in QK_NORM_TYPES:
            raise ValueError(
                f"qk_norm={qk_norm!r} is not supported; allowed: None, {', '.join(QK_NORM_TYPES)}."
            )
        self.heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.inner_dim = hidden_size
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qk_norm = qk_norm
        self.uses_rope = uses_rope
        # What diffusers' attention helpers (fuse_projections, generic processors) read.
        self.use_bias = True
        self.is_cross_attention = False
        self.residual_connection = False
        self.rescale_output_factor = 1.0
        self.upcast_attention = False
        self.upcast_softmax = False
        self.spatial_norm = None
        self.group_norm = None
        self.norm_cross = None

        self.to_q = nn.Linear(hidden_size, hidden_size)
        self.to_k = nn.Linear(hidden_size, hidden_size)
        self.to_v = nn.Linear(hidden_size, hidden_size)
        self.to_out = nn.ModuleList([nn.Linear(hidden_size, hidden_size), nn.Dropout(0.0)])
        if qk_norm is None:
            self.norm_q = self.norm_k = None
        elif qk_norm == "rms_norm":
            self.norm_q, self.norm_k = RMSNorm(self.head_dim, eps), RMSNorm(self.head_dim, eps)
        else:
            self.norm_q = nn.LayerNorm(self.head_dim, eps=eps)
            self.norm_k = nn.LayerNorm(self.head_dim, eps=eps)
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def set_processor(self, processor: object) -> None:
        """Use ``processor`` to compute this attention.

        Args:
            processor: A callable ``processor(attn, hidden_states, ...)``: a `DiTAttnProcessor`, a processor of the
                user's that takes ``rope``, or (for a module without RoPE and q/k norm) one of diffusers' generic
                processors.

        Raises:
            ValueError: If the module uses RoPE or a q/k norm and the processor does not take ``rope``.
        """
        rope_aware = takes_rope(processor)
        if not rope_aware and (self.uses_rope or self.qk_norm is not None):
            needs = " and ".join(
                what
                for what, used in (("2-D RoPE", self.uses_rope), (f"qk_norm={self.qk_norm!r}", self.qk_norm))
                if used
            )
            raise ValueError(
                f"{type(processor).__name__} cannot compute this attention: it uses {needs}, which diffusers' "
                "generic processors do not apply; allowed: DiTAttnProcessor or a processor whose call takes `rope`."
            )
        super().set_processor(processor)
        self._processor_takes_rope = rope_aware

    def forward(self, hidden_states: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over the tokens of ``hidden_states`` ``(batch, tokens, hidden)`` with the current processor.

        Args:
            hidden_states: The tokens.
            rope: Rotary tables from :func:`~flow_pipelines.models.embeddings.rope_2d_frequencies`, or None.

        Returns:
            The attention output, ``(batch, tokens, hidden)``.
        """
        if self._processor_takes_rope:
            return self.processor(self, hidden_states, rope=rope)
        return self.processor(self, hidden_states)


def upgrade_legacy_attention_keys(state_dict: MutableMapping[str, torch.Tensor], prefix: str = "") -> bool:
    """Rename, in place, the attention weights of a `DiTModel` state dict saved before the diffusers layout.

    ``blocks.N.attn.qkv.{weight,bias}`` (queries, keys and values stacked, in that order) becomes ``to_q`` /
    ``to_k`` / ``to_v`` and ``blocks.N.attn.proj.*`` becomes ``to_out.0.*``; the values are unchanged. Keys already
    in the current layout, and keys outside ``prefix``, are left alone.

    Args:
        state_dict: A state dict holding a `DiTModel`'s weights.
        prefix: Where the model's keys start (``""`` for the model's own state dict, ``"module."`` in a wrapper).

    Returns:
        True if any key was renamed.
    """
    pattern = re.compile(re.escape(prefix) + LEGACY_ATTENTION_KEY_PATTERN)
    attentions = {prefix + match["attention"] for key in state_dict if (match := pattern.fullmatch(key))}
    for attention in attentions:
        for kind in ("weight", "bias"):
            fused = state_dict.pop(f"{attention}qkv.{kind}", None)
            if fused is not None:
                # Copies, not views of one storage: safetensors refuses to save tensors that share memory.
                for name, part in zip(("to_q", "to_k", "to_v"), fused.chunk(3, dim=0), strict=True):
                    state_dict[f"{attention}{name}.{kind}"] = part.clone()
            projection = state_dict.pop(f"{attention}proj.{kind}", None)
            if projection is not None:
                state_dict[f"{attention}to_out.0.{kind}"] = projection
    return bool(attentions)
