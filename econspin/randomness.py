"""Explicit randomness: every draw comes from a generator made from a seed, never global.

Batch element b of a run is (scenario point, replica r). Its own stream is seeded from
(run seed, r), so a batch equals its elements run one at a time, and sweep points with the
same replica index share their random numbers (common random numbers make differences
between points less noisy). Quenched disorder is drawn from streams of its own, shared by
all replicas: projections, W_O and ffn weights from the disorder stream (one per replica
when ``Rollout.create(..., disorder_per_replica=True)``), fields h from the field stream,
trade networks from the network stream.
"""

from __future__ import annotations

import numpy as np
import torch

STREAM_DYNAMICS = 0
STREAM_DISORDER = 1
STREAM_INITIAL = 2
STREAM_FIELDS = 3
STREAM_NETWORK = 4


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from a base seed and a path of integer keys (NumPy's SeedSequence)."""
    # modulo 2**64 keeps negative seeds distinct from their absolute values
    sequence = np.random.SeedSequence(entropy=int(seed) % 2**64, spawn_key=tuple(int(k) for k in keys))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
