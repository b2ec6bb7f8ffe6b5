import pytest
import torch

from minifold.data.generator import ShapeGenerator


def loop_positions(generator: ShapeGenerator, sequence: torch.Tensor, reference_code: bool):
    """Plain per-sequence, per-letter loop written from the description."""
    embedded = generator.embedding(sequence - 1)
    n = len(sequence)

    def states(rnn, vectors):
        state, out = torch.zeros(1, 1, rnn.hidden_size), []
        for vector in vectors:
            _, state = rnn(vector.view(1, 1, -1), state)
            out.append(state.view(-1))
        return out

    forward = states(generator.forward_rnn, embedded)
    after_reversed = states(generator.backward_rnn, embedded.flip(0))
    if reference_code:
        backward = after_reversed  # state after the last i+1 letters, paired with i
    else:
        backward = [after_reversed[n - 1 - i] for i in range(n)]  # has read s[i..n-1]
    steps = [
        generator.step_mlp(forward[i] + generator.back_discount * backward[i]) for i in range(n)
    ]
    points = [torch.zeros(generator.dim, dtype=torch.float64)]
    for i in range(1, n):
        step = steps[i].double() + (steps[0].double() if reference_code and i == 1 else 0)
        points.append(points[-1] + step)
    return torch.stack(points).float()


@pytest.mark.parametrize("reference_code", [False, True])
@pytest.mark.parametrize("dim", [2, 3])
def test_batched_matches_per_sequence_loop(reference_code, dim):
    generator = ShapeGenerator(
        dim=dim, back_discount=0.3, reference_code=reference_code, min_len=3, max_len=17
    )
    tokens = generator.sample_tokens(12, torch.Generator().manual_seed(1))
    positions = generator(tokens)
    assert positions.shape == (12, 17, dim)
    for row in range(12):
        sequence = tokens[row][tokens[row] != 0]
        expected = loop_positions(generator, sequence, reference_code)
        torch.testing.assert_close(positions[row, : len(sequence)], expected, atol=1e-6, rtol=0)
        assert (positions[row, len(sequence) :] == 0).all()


def test_seed_zero_draws_the_reference_weights():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(8, 8)
    torch.nn.init.uniform_(embedding.weight)
    forward = torch.nn.RNN(8, 4, batch_first=True)
    backward = torch.nn.RNN(8, 4, batch_first=True)
    linear = torch.nn.Linear(4, 2)
    generator = ShapeGenerator(seed=0)
    assert torch.equal(generator.embedding.weight, embedding.weight)
    assert torch.equal(generator.forward_rnn.weight_hh_l0, forward.weight_hh_l0)
    assert torch.equal(generator.backward_rnn.weight_ih_l0, backward.weight_ih_l0)
    assert torch.equal(generator.step_mlp[0].weight, linear.weight)


def test_modes_differ_and_first_point_is_origin():
    tokens, mask = ShapeGenerator().alphabet.encode_batch(["abeaefcgeegaccffddeaggdheabbbaggaffd"])
    described = ShapeGenerator(reference_code=False)(tokens, mask)
    reference = ShapeGenerator(reference_code=True)(tokens, mask)
    assert torch.equal(described[0, 0], torch.zeros(2))
    assert torch.equal(reference[0, 0], torch.zeros(2))
    assert not torch.allclose(described, reference)


def test_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = ShapeGenerator(seed=5)
    assert torch.equal(torch.rand(1), expected)
    second = ShapeGenerator(seed=5)
    other = ShapeGenerator(seed=6)
    tokens = first.sample_tokens(4, torch.Generator().manual_seed(0))
    assert torch.equal(first(tokens), second(tokens))
    assert not torch.allclose(first(tokens), other(tokens))


def test_padding_does_not_change_a_sequence():
    generator = ShapeGenerator(back_discount=1.0)
    alone, mask = generator.alphabet.encode_batch(["abcabcabcabc"])
    padded, padded_mask = generator.alphabet.encode_batch(["abcabcabcabc", "h" * 30])
    torch.testing.assert_close(generator(alone, mask)[0], generator(padded, padded_mask)[0, :12])


def test_lengths_cover_the_inclusive_range():
    generator = ShapeGenerator(min_len=20, max_len=39)
    lengths = (generator.sample_tokens(5000, torch.Generator().manual_seed(0)) != 0).sum(-1)
    assert int(lengths.min()) == 20 and int(lengths.max()) == 39


@pytest.mark.parametrize(
    "kwargs, message",
    [({"dim": 1}, "dim is 1"), ({"min_len": 10, "max_len": 5}, "min_len <= max_len")],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapeGenerator(**kwargs)


def test_generator_computes_at_full_float32_and_restores_the_settings():
    generator = ShapeGenerator()
    tokens = generator.sample_tokens(4, torch.Generator().manual_seed(0))
    expected = generator(tokens)
    torch.set_float32_matmul_precision("medium")
    try:
        again = generator(tokens)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert torch.equal(again, expected)
