"""Reproduce the miscompiled hash (torch 2.13 Inductor, CPU) and show the exact form it is now given.

SplitMix64's finaliser on int64 tensors, applied to a traced ``arange`` of tags broadcast
against keys, compiled by torch.compile: Inductor computes the tags' hash once per row in
scalar C++, ``int64_t(tmp6 * -4658895280553007687)``, a signed multiplication whose overflow is
undefined behaviour. Since the operand is ``5L + x0`` with the loop index x0 in [0, 4), GCC at
-O3 knows its range and folds the overflowing products into wrong constants: every compiled
word differs from the eager one. The same multiplication in 32-bit halves
(``econspin.randomness.mix64_exact``) has no overflow, and compiles to the eager words.

    python -m experiments.hash_miscompiled
    TORCH_LOGS=output_code python -m experiments.hash_miscompiled   # the generated C++

docs/performance_log.md ("The hashes compiled") shows the C++ and a 15-line reduction outside torch.
"""

from __future__ import annotations

import torch

from econspin.randomness import _STEPS, mix64, mix64_exact


def mix64_wrapping(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser as it was given to torch.compile: int64 products that overflow."""
    for shift, low, multiplier in _STEPS:
        x = x ^ ((x >> shift) & low)
        if multiplier is not None:
            x = x * multiplier
    return x


def hashed_words(keys: torch.Tensor, mix) -> torch.Tensor:
    """mix(key ^ mix(tag)) for tags 5..8 (a traced arange) and every key: a (4, keys) table."""
    tags = mix(torch.arange(5, 9, dtype=torch.int64))
    return mix(tags.reshape(4, 1) ^ keys)


def main() -> None:
    keys = torch.tensor([0, -1, 2**63 - 1, -(2**63)] + list(range(12)), dtype=torch.int64)
    eager = hashed_words(keys, mix64)
    for name, mix in (("wrapping int64 products", mix64_wrapping), ("mix64_exact", mix64_exact)):
        compiled = torch.compile(hashed_words, dynamic=False)(keys, mix)
        torch._dynamo.reset()  # each form compiles afresh
        wrong = int((compiled != eager).sum())
        print(f"{name}: {wrong} of {eager.numel()} compiled words differ from eager")


if __name__ == "__main__":
    main()
