"""Tokens for sequences over a small alphabet; PAD is 0, letters are 1..K."""

from __future__ import annotations

from collections.abc import Sequence

import torch

PAD = 0


class Alphabet:
    """Encodes and decodes sequences, rejecting what the models cannot take.

    Args:
        letters: the alphabet, one character per letter, e.g. "abcdefgh".
        max_len: the longest sequence accepted.
    """

    def __init__(self, letters: str = "abcdefgh", max_len: int = 39) -> None:
        if len(letters) == 0 or len(set(letters)) != len(letters):
            raise ValueError(f"alphabet {letters!r} must be non-empty with distinct letters")
        if max_len < 1:
            raise ValueError(f"max_len is {max_len}; it must be >= 1")
        self.letters = letters
        self.max_len = max_len
        self._index = {letter: i + 1 for i, letter in enumerate(letters)}

    def __len__(self) -> int:
        return len(self.letters)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, PAD included."""
        return len(self.letters) + 1

    def validate(self, sequence: str) -> None:
        """Raise ValueError naming the problem if `sequence` cannot be encoded."""
        if not isinstance(sequence, str):
            raise ValueError(f"sequence must be a string, got {type(sequence).__name__}")
        if len(sequence) == 0:
            raise ValueError(f"sequence is empty; lengths 1 to {self.max_len} are allowed")
        if len(sequence) > self.max_len:
            raise ValueError(
                f"sequence has length {len(sequence)}; the longest allowed is {self.max_len}"
            )
        bad = sorted({c for c in sequence if c not in self._index})
        if bad:
            shown = "".join(bad)
            raise ValueError(f"sequence contains {shown!r}; alphabet is {self.letters!r}")

    def encode(self, sequence: str) -> torch.Tensor:
        """[N] token ids (1..K) of one sequence."""
        self.validate(sequence)
        return torch.tensor([self._index[c] for c in sequence], dtype=torch.long)

    def encode_batch(self, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded tokens [B, N] and mask [B, N] (True on real letters)."""
        if len(sequences) == 0:
            raise ValueError("no sequences given")
        encoded = [self.encode(s) for s in sequences]
        longest = max(len(e) for e in encoded)
        tokens = torch.full((len(encoded), longest), PAD, dtype=torch.long)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = ids
        return tokens, tokens != PAD

    def decode(self, tokens: torch.Tensor) -> str | list[str]:
        """Letters of [N] tokens, or a list for [B, N]; PAD is dropped."""
        if tokens.dim() == 2:
            return [self._letters(row) for row in tokens]
        return self._letters(tokens)

    def _letters(self, tokens: torch.Tensor) -> str:
        """Letters of [N] tokens; PAD is dropped."""
        ids = tokens.tolist()
        if any(i < 0 or i > len(self.letters) for i in ids):
            raise ValueError(f"token ids must lie in 0..{len(self.letters)}, got {ids}")
        return "".join(self.letters[i - 1] for i in ids if i != PAD)
