"""The layers of a DiT block: adaLN-Zero modulation, attention with optional q/k norm and 2-D RoPE, the MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import apply_rope


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


class DiTAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, optional q/k norm and optional 2-D RoPE.

    Args:
        hidden_size: Token width.
        num_heads: Number of heads (must divide ``hidden_size``).
        qk_norm: ``None``, ``"rms_norm"`` or ``"layer_norm"``: per-head normalisation of queries and keys.
        eps: Epsilon of the q/k norms.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, qk_norm: str | None = None, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        if qk_norm is None:
            self.norm_q = self.norm_k = None
        elif qk_norm == "rms_norm":
            self.norm_q, self.norm_k = RMSNorm(self.head_dim, eps), RMSNorm(self.head_dim, eps)
        else:
            self.norm_q = nn.LayerNorm(self.head_dim, eps=eps)
            self.norm_k = nn.LayerNorm(self.head_dim, eps=eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over the tokens of ``x`` ``(batch, tokens, hidden)``; ``rope`` from :func:`rope_2d_frequencies`."""
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        if self.norm_q is not None:
            query, key = self.norm_q(query), self.norm_k(key)
        if rope is not None:
            query, key = apply_rope(query, rope), apply_rope(key, rope)
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class DiTMLP(nn.Module):
    """Two-layer feed-forward network with tanh-approximated GELU, as in DiT.

    Args:
        hidden_size: Token width.
        mlp_hidden_size: Inner width.
    """

    def __init__(self, hidden_size: int, mlp_hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden_size)
        self.fc2 = nn.Linear(mlp_hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # normed * (1 + scale) + shift in one kernel.
    return torch.addcmul(shift, normed, 1 + scale)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: ``c`` gives shift, scale and gate for attention and MLP.

    Args:
        hidden_size: Token width.
        num_heads: Attention heads.
        mlp_ratio: MLP inner width over ``hidden_size``.
        qk_norm: Optional q/k normalisation, see :class:`DiTAttention`.
        norm_eps: Epsilon of the pre-attention LayerNorm (and of the q/k norms).
        mlp_norm_eps: Epsilon of the pre-MLP LayerNorm.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: str | None = None,
        norm_eps: float = 1e-6,
        mlp_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.attn = DiTAttention(hidden_size, num_heads, qk_norm=qk_norm, eps=norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = DiTMLP(hidden_size, int(hidden_size * mlp_ratio))
        self.modulation = nn.Linear(hidden_size, 6 * hidden_size)

    def forward(
        self, x: torch.Tensor, activated_condition: torch.Tensor, rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Update tokens ``x`` ``(batch, tokens, hidden)`` given ``silu(c)`` ``(batch, hidden)``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.modulation(activated_condition).unsqueeze(1).chunk(6, dim=-1)
        )
        x = torch.addcmul(x, gate_msa, self.attn(_modulate(self.norm1(x), shift_msa, scale_msa), rope))
        return torch.addcmul(x, gate_mlp, self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN (shift and scale from ``c``) followed by the linear map to patch pixels.

    Args:
        hidden_size: Token width.
        patch_size: Patch side.
        out_channels: Output channels per pixel.
        eps: LayerNorm epsilon.
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=eps)
        self.modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, activated_condition: torch.Tensor) -> torch.Tensor:
        """Map tokens ``(batch, tokens, hidden)`` to ``(batch, tokens, patch * patch * out_channels)``."""
        shift, scale = self.modulation(activated_condition).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))
