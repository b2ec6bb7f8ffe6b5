"""The frozen, randomly initialised networks that give every sequence a shape."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor, nn

from minifold.data.alphabet import PAD, Alphabet
from minifold.errors import ConfigError
from minifold.geometry import reversal_index


class ShapeGenerator(nn.Module):
    """Maps padded token batches to chain positions with frozen random networks.

    Step i is `tanh(linear(f_i + back_discount * b_i))` where f_i is a forward
    RNN's state after s[0..i] and b_i a backward RNN's state. Positions are the
    cumulative sum of steps from the origin.

    Two conventions, chosen by `reference_code`:
      * False (the model as described): b_i has read s[i..n-1]; p_0 = 0 and
        p_i = p_{i-1} + h_i, so the first step h_0 is dropped.
      * True (the reference implementation's numbers): b_i is the backward
        state after the last i+1 letters (it belongs to position n-1-i), and
        p_i = h_0 + ... + h_i for i >= 1.

    Weights are drawn from `torch.manual_seed(seed)` in the reference's order
    (embedding, its uniform init, forward RNN, backward RNN, linear), so seed 0
    gives the reference's networks. The global RNG state is left untouched.

    Args:
        alphabet: letters of the sequences.
        dim: dimension of the shapes (>= 2).
        embedding_dim, hidden_size: sizes of the embedding and both RNNs.
        back_discount: weight of the backward RNN's state.
        reference_code: reproduce the reference implementation (see above).
        seed: seed of the weights.
        min_len, max_len: sampled lengths are uniform over [min_len, max_len].
    """

    alphabet: Alphabet
    dim: int
    back_discount: float
    reference_code: bool
    min_len: int
    max_len: int
    hparams: dict[str, Any]
    embedding: nn.Embedding
    forward_rnn: nn.RNN
    backward_rnn: nn.RNN
    step_mlp: nn.Sequential

    def __init__(
        self,
        alphabet: str = "abcdefgh",
        dim: int = 2,
        embedding_dim: int = 8,
        hidden_size: int = 4,
        back_discount: float = 0.1,
        reference_code: bool = False,
        seed: int = 0,
        min_len: int = 20,
        max_len: int = 39,
    ) -> None:
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("embedding_dim", embedding_dim),
            ("hidden_size", hidden_size),
            ("seed", seed),
            ("min_len", min_len),
            ("max_len", max_len),
        ):
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ConfigError(f"generator.{name} is {value!r}; it must be an integer")
        if dim < 2:
            raise ConfigError(f"generator.dim is {dim}; shapes need dim >= 2")
        if embedding_dim < 1 or hidden_size < 1:
            raise ConfigError(
                f"generator.embedding_dim and hidden_size are {embedding_dim} and {hidden_size}; "
                "both must be >= 1"
            )
        if not 1 <= min_len <= max_len:
            raise ConfigError(
                f"generator lengths [{min_len}, {max_len}] must satisfy 1 <= min_len <= max_len"
            )
        if (
            isinstance(back_discount, bool)
            or not isinstance(back_discount, Real)
            or not math.isfinite(back_discount)
        ):
            raise ConfigError(
                f"generator.back_discount is {back_discount!r}; it must be a finite number"
            )
        self.hparams = dict(
            alphabet=alphabet,
            dim=int(dim),
            embedding_dim=int(embedding_dim),
            hidden_size=int(hidden_size),
            back_discount=float(back_discount),
            reference_code=bool(reference_code),
            seed=int(seed),
            min_len=int(min_len),
            max_len=int(max_len),
        )
        self.alphabet = Alphabet(alphabet, max_len=max_len)
        self.dim = dim
        self.back_discount = back_discount
        self.reference_code = reference_code
        self.min_len = min_len
        self.max_len = max_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = nn.Embedding(len(alphabet), embedding_dim)
            nn.init.uniform_(self.embedding.weight)
            self.forward_rnn = nn.RNN(embedding_dim, hidden_size, batch_first=True)
            self.backward_rnn = nn.RNN(embedding_dim, hidden_size, batch_first=True)
            self.step_mlp = nn.Sequential(nn.Linear(hidden_size, dim), nn.Tanh())
        self.requires_grad_(False)
        self.eval()

    def sample_tokens(self, num: int, generator: torch.Generator) -> Tensor:
        """[num, max_len] random padded tokens with lengths uniform in [min_len, max_len].

        Drawn on the random generator's device (a CUDA generator draws on the GPU).
        """
        device = generator.device
        lengths = torch.randint(
            self.min_len, self.max_len + 1, (num,), generator=generator, device=device
        )
        letters = torch.randint(
            1, len(self.alphabet) + 1, (num, self.max_len), generator=generator, device=device
        )
        positions = torch.arange(self.max_len, device=device)
        return torch.where(positions[None, :] < lengths[:, None], letters, PAD)

    @torch.no_grad()
    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Positions of a padded batch.

        Args:
            tokens: [B, N] token ids, PAD (0) after each sequence's end.
            mask: [B, N] True on real letters; derived from tokens if None.
        Returns:
            [B, N, dim] positions, zero at padding; the first point is the origin.
        """
        with _full_float32():
            return self._positions(tokens, mask)

    def _positions(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        """`forward` (see there)."""
        if mask is None:
            mask = tokens != PAD
        mask = mask.bool()
        # Reverse each sequence inside its own length; padding stays at the end,
        # so it never reaches the states of real letters.
        reverse_index = reversal_index(mask)
        reversed_tokens = torch.gather(tokens, 1, reverse_index)
        # Gather token ids, not embeddings: the reversal then moves 8x less data.
        embedded_dtype = self.embedding.weight.dtype
        forward_states, _ = self.forward_rnn(self.embedding((tokens - 1).clamp(min=0)))
        reversed_states, _ = self.backward_rnn(self.embedding((reversed_tokens - 1).clamp(min=0)))
        if self.reference_code:
            backward_states = reversed_states
        else:
            state_index = reverse_index[..., None].expand(-1, -1, reversed_states.shape[-1])
            backward_states = torch.gather(reversed_states, 1, state_index)

        steps = self.step_mlp(forward_states + self.back_discount * backward_states)
        # Accumulate in float64: a float32 running sum drifts by ~1e-6 over 40 steps.
        steps = (steps * mask[..., None]).double()
        if not self.reference_code:
            steps[:, 0] = 0.0  # p_0 = 0 and p_i = p_{i-1} + h_i: the first step is dropped
        positions = torch.cumsum(steps, dim=1)
        positions[:, 0] = 0.0  # the reference's second point is h_0 + h_1
        positions = positions.to(embedded_dtype)
        return positions * mask[..., None]


@contextmanager
def _full_float32() -> Iterator[None]:
    """Float32 matrix products and cuDNN RNNs at full precision inside the block (no TF32).

    The generator is the task's ground truth: the same tokens must give the same
    shapes on every device. With TF32 (cuDNN's RNN default, and the GPU preset's
    `matmul_precision: high`) shapes drawn on an H200 differed from the CPU's by
    up to 3e-3.
    """
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)
