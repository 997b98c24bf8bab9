"""How a DiT knows where and when it is: timestep and label embeddings, 2-D sin-cos positions, 2-D rotary tables."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0, frequency_shift: int = 0
) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` of (possibly fractional) timesteps.

    Args:
        timesteps: A 1-d tensor of timesteps, one per sample; fractional values are embedded as they are.
        dim: The embedding width.
        max_period: Sets the lowest frequency; frequencies are ``max_period ** (-i / (dim / 2 - frequency_shift))``.
        frequency_shift: 0 as in the original DiT; diffusers' ``DiTTransformer2DModel`` uses 1.

    Returns:
        A float32 tensor ``(len(timesteps), dim)``.
    """
    half = dim // 2
    # This operation order reproduces DiT's (and diffusers') float32 frequencies bit for bit; at t ~ 1000
    # a one-ulp difference in a frequency would move the embedding by ~1e-4.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - frequency_shift))
    angles = timesteps.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _patch_coordinates(
    grid_height: int, grid_width: int, device: torch.device | None, width: int, needs: str
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """Row and column index of every patch, row-major, as float columns ``(tokens, 1)``, and the device.

    Positions are computed in float64 (as the original DiT's numpy code did) except where unsupported. Both
    tables split their ``width`` four ways (two axes, two functions), so it must be divisible by 4.
    """
    if width % 4:
        raise ValueError(f"{needs} divisible by 4; got {width}.")
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    rows, columns = torch.meshgrid(
        torch.arange(grid_height, dtype=dtype, device=device),
        torch.arange(grid_width, dtype=dtype, device=device),
        indexing="ij",
    )
    return rows.reshape(-1, 1), columns.reshape(-1, 1), device


def sincos_2d_positions(
    dim: int, grid_height: int, grid_width: int, device: torch.device | None = None
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings of a ``grid_height x grid_width`` patch grid (MAE / DiT layout).

    The first half of the channels encodes the column, the second half the row, each as
    ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000 ** (-i / (dim / 4))``; tokens are in row-major order.

    Args:
        dim: The embedding width, divisible by 4.
        grid_height: Number of patch rows.
        grid_width: Number of patch columns.
        device: Where to build the table.

    Returns:
        A float32 tensor ``(grid_height * grid_width, dim)``.

    Raises:
        ValueError: If ``dim`` is not divisible by 4.
    """
    rows, columns, device = _patch_coordinates(
        grid_height, grid_width, device, dim, "sin-cos positions need a width"
    )
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=rows.dtype, device=device) / quarter)

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(columns), encode(rows)], dim=1).float()


def rope_2d_frequencies(
    head_dim: int,
    grid_height: int,
    grid_width: int,
    theta: float = 10000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Cos and sin tables of 2-D rotary embeddings (FLUX-style, interleaved pairs).

    Half of each head's channels rotate with the patch row, half with the column; within each half,
    channel pairs ``(2i, 2i + 1)`` rotate at frequency ``theta ** (-2i / (head_dim / 2))``.

    Args:
        head_dim: Channels per attention head, divisible by 4.
        grid_height: Number of patch rows.
        grid_width: Number of patch columns.
        theta: The rotary base.
        device: Where to build the tables.

    Returns:
        A float32 tensor ``(2, grid_height * grid_width, head_dim)``: cos, then sin.

    Raises:
        ValueError: If ``head_dim`` is not divisible by 4.
    """
    needs = "2-D rotary embeddings need a head dimension"
    rows, columns, device = _patch_coordinates(grid_height, grid_width, device, head_dim, needs)
    axis_dim = head_dim // 2
    frequencies = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=rows.dtype, device=device) / axis_dim)
    angles = torch.cat([rows * frequencies[None], columns * frequencies[None]], dim=1).repeat_interleave(
        2, dim=1
    )
    return torch.stack([torch.cos(angles), torch.sin(angles)]).float()


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` by the angles whose cos / sin ``rope`` holds.

    Args:
        x: Queries or keys ``(..., tokens, head_dim)`` (``(batch, heads, tokens, head_dim)``), or any layout the
            tables broadcast against (``(batch, tokens, heads, head_dim)`` with tables ``(2, tokens, 1, head_dim)``).
        rope: The tables from :func:`rope_2d_frequencies`, ``(2, tokens, head_dim)``, with a unit axis inserted
            before ``head_dim`` for a layout with the heads after the tokens.

    Returns:
        The rotated tensor, in ``x``'s dtype (the rotation itself runs in float32).
    """
    cos, sin = rope.unbind(0)
    x_float = x.float()
    real, imag = x_float.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x_float * cos + rotated * sin).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features followed by a two-layer SiLU MLP.

    Args:
        hidden_size: Output width.
        frequency_dim: Width of the sinusoidal features.
        frequency_shift: Frequency denominator shift, see :func:`timestep_embedding`.
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256, frequency_shift: int = 0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.frequency_shift = frequency_shift
        self.linear_1 = nn.Linear(frequency_dim, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Embed a 1-d tensor of timesteps into ``(batch, hidden_size)``."""
        features = timestep_embedding(timesteps, self.frequency_dim, frequency_shift=self.frequency_shift)
        features = features.to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(features)))


class LabelEmbedder(nn.Module):
    """Class label table with one extra row, id ``num_classes``, for the null (unconditional) class.

    Args:
        num_classes: Number of real classes.
        hidden_size: Embedding width.
    """

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, class_labels: torch.Tensor) -> torch.Tensor:
        """Look up ``(batch,)`` integer labels; returns ``(batch, hidden_size)``."""
        return self.embedding_table(class_labels)
