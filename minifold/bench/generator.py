"""Generator throughput: one batched call against a per-sequence, per-letter loop."""

from __future__ import annotations

import time

import torch

from minifold.data.generator import ShapeGenerator


@torch.no_grad()
def loop_positions(generator: ShapeGenerator, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
    """The reference's way: one sequence at a time, one RNN call per letter."""
    hidden = generator.forward_rnn.hidden_size
    shapes = []
    for tokens in sequences:
        embedded = generator.embedding(tokens - 1)
        forward, backward = [], []
        state = torch.zeros(1, 1, hidden)
        for vector in embedded:
            _, state = generator.forward_rnn(vector.view(1, 1, -1), state)
            forward.append(state.view(-1))
        state = torch.zeros(1, 1, hidden)
        for vector in embedded.flip(0):
            _, state = generator.backward_rnn(vector.view(1, 1, -1), state)
            backward.append(state.view(-1))
        backward = backward[::-1]  # described model: state at i has read s[i..n-1]
        steps = generator.step_mlp(
            torch.stack(forward) + generator.back_discount * torch.stack(backward)
        )
        shapes.append(torch.cumsum(steps, 0) - steps[0])
    return shapes


def run(quick: bool = False) -> dict:
    num = 1000 if quick else 10_000
    loop_num = 50 if quick else 300
    generator = ShapeGenerator()
    rng = torch.Generator().manual_seed(0)
    tokens = generator.sample_tokens(num, rng)
    generator(tokens[:64])  # warm-up
    times = []
    for _ in range(5):
        started = time.perf_counter()
        batch_tokens = generator.sample_tokens(num, rng)
        positions = generator(batch_tokens)
        times.append(time.perf_counter() - started)
    batched_seconds = sorted(times)[len(times) // 2]

    sequences = [row[row != 0] for row in tokens[:loop_num]]
    started = time.perf_counter()
    looped = loop_positions(generator, sequences)
    loop_seconds = time.perf_counter() - started
    batched = generator(tokens[:loop_num])
    max_error = max(
        float((batched[i, : len(s)] - looped[i]).abs().max()) for i, s in enumerate(sequences)
    )
    batched_rate = num / batched_seconds
    loop_rate = loop_num / loop_seconds
    return {
        "sequences": num,
        "batched_seconds_median_of_5": batched_seconds,
        "batched_sequences_per_s": batched_rate,
        "loop_sequences_timed": loop_num,
        "loop_sequences_per_s": loop_rate,
        "speedup": batched_rate / loop_rate,
        "max_abs_difference": max_error,
        "positions_shape": list(positions.shape),
        "targets": {"sequences_per_s": 100_000, "speedup": 500},
    }


def markdown(results: dict) -> str:
    return "\n".join(
        [
            "| method | sequences | sequences/s |",
            "|---|---|---|",
            f"| batched (one call, sampling included) | {results['sequences']} | {results['batched_sequences_per_s']:,.0f} |",
            f"| per-sequence loop (timed on {results['loop_sequences_timed']}) | {results['loop_sequences_timed']} | {results['loop_sequences_per_s']:,.0f} |",
            "",
            f"Speed-up {results['speedup']:,.0f}x (targets: >= 100,000 sequences/s and >= 500x); "
            f"batched and loop agree to {results['max_abs_difference']:.1e}.",
        ]
    )
