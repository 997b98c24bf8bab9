"""The layers of a DiT block: adaLN-Zero modulation, the attention (`DiTAttention`, in its own module), the MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dit_attention import DiTAttention


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
        uses_rope: Whether the block is given 2-D rotary tables (``pos_embed="rope"``).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: str | None = None,
        norm_eps: float = 1e-6,
        mlp_norm_eps: float = 1e-6,
        uses_rope: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.attn = DiTAttention(hidden_size, num_heads, qk_norm=qk_norm, eps=norm_eps, uses_rope=uses_rope)
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
