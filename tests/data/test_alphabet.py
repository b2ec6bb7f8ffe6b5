import pytest
import torch

from minifold.data.alphabet import PAD, Alphabet


def test_round_trip_and_padding():
    alphabet = Alphabet("abcdefgh", max_len=10)
    tokens, mask = alphabet.encode_batch(["abc", "hgfedcba"])
    assert tokens.shape == (2, 8)
    assert tokens[0, 3:].eq(PAD).all() and mask.sum().item() == 11
    assert tokens[0, :3].tolist() == [1, 2, 3]
    assert alphabet.decode(tokens) == ["abc", "hgfedcba"]
    assert alphabet.vocab_size == 9


@pytest.mark.parametrize(
    "sequence, message",
    [
        ("abz", "contains 'z'; alphabet is 'abcdefgh'"),
        ("", "empty"),
        ("a" * 11, "length 11; the longest allowed is 10"),
    ],
)
def test_bad_sequences(sequence, message):
    with pytest.raises(ValueError, match=message):
        Alphabet("abcdefgh", max_len=10).encode(sequence)


def test_bad_tokens_and_alphabet():
    with pytest.raises(ValueError, match="0..8"):
        Alphabet().decode(torch.tensor([1, 9]))
    with pytest.raises(ValueError, match="distinct"):
        Alphabet("aab")
