"""The Triton kernel's programs compiled for an sm_90 GPU (H100, H200) on a machine without one.

    PYTHONPATH=.:/path/to/triton python -m experiments.triton_compile_check [--tiles 64x64x4,128x64x8]

Triton compiles a program for a target without its GPU: AST, TTIR, PTX, then the wheel's own
ptxas to a cubin. For each case (fp32, fp64, and run.utility_precision's bf16 and tf32
products), network kind (0 none, 1 bias, 2 byte mask) and tile size (buyers x sellers x
warps) this prints the shared memory each program asks for (at Triton's default pipeline
stages) against an H100's limit per program, and the tensor-core instructions in its PTX,
with d_k = d = 32 (the benchmark economy's). tests/test_triton.py compiles the default CUDA tiles so;
docs/performance.md ("The Triton kernel") reports a run of this sweep.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import torch

from econspin.fused import exp2_limits
from econspin.triton_blocks import PRODUCT_PRECISIONS
from econspin.triton_kernels import programs

H100_SHARED_MEMORY = 232448  # bytes of shared memory one program may use on sm_90 (227 KiB)
POINTER_ARGUMENTS = {
    "left",
    "right",
    "shifted_max",
    "tie_width",
    "delivered",
    "moment_rows",
    "total",
    "norm",
    "dot",
    "moments",
    "per_unit",
}
LOW_OPERANDS = {"left", "right", "delivered"}  # bf16 with run.utility_precision: bfloat16
PROGRAMS = ("row_max_program", "row_sums_program", "revenue_program")
# each case: the working dtype, the products' operands' dtype (Triton's names) and run.utility_precision
CASES = {
    "fp32": ("fp32", "fp32", "full"),
    "fp64": ("fp64", "fp64", "full"),
    "bf16": ("fp32", "bf16", "bfloat16"),
    "tf32": ("fp32", "fp32", "tf32"),
}
WORKING_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# Hopper's warp-group and the older warp-level matrix instructions: the tensor cores
TENSOR_CORE_INSTRUCTION = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync)[\w.]*")


def program_constants(case: str, network: int, rows: int, columns: int, keys: int = 32, values: int = 32) -> dict:
    """Every constexpr of the three programs for a case of :data:`CASES`, the network kind and a tile.

    ``keys`` and ``values``: the padded widths of the two products (d_k = 32 and d = 32).
    """
    working, _, precision = CASES[case]
    big, floor = exp2_limits(WORKING_DTYPES[working])
    utilities, received = PRODUCT_PRECISIONS[precision]  # what econspin.triton_blocks launches the programs with
    return dict(KEYS_PADDED=keys, VALUES_PADDED=values, NETWORK=network, BIG=big, BLOCK_ROWS=rows,
                BLOCK_COLUMNS=columns, FLOOR=floor, THRESHOLD=2.0 ** (floor + 1), UTILITIES=utilities,
                RECEIVED=received)  # fmt: skip


def compiled_for_sm90(program, case: str, constants: dict, warps: int):
    """``program`` (a triton.jit copy, econspin.triton_kernels.programs(False)) compiled for sm_90 here."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    dtype, low, _ = CASES[case]
    signature = {}
    for name in program.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name == "network":
            signature[name] = "*u8" if constants["NETWORK"] == 2 else f"*{dtype}"
        elif name == "revenue":
            signature[name] = "*fp64"
        elif name in POINTER_ARGUMENTS:
            signature[name] = f"*{low}" if name in LOW_OPERANDS else f"*{dtype}"
        else:
            signature[name] = "i32"
    source = ASTSource(program, signature, {name: value for name, value in constants.items() if name in signature})
    return triton_compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def tensor_core_instructions(compiled) -> dict[str, int]:
    """The tensor-core instructions in a compiled program's PTX, by name (shape and operand types), with counts."""
    return dict(collections.Counter(TENSOR_CORE_INSTRUCTION.findall(compiled.asm["ptx"])))


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiles", default="64x64x4,128x64x8,128x128x8", help="buyers x sellers x warps, comma-separated"
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: fp32, fp64, bf16 (bf16 products)")
    options = parser.parse_args(arguments)
    kernels = programs(False)
    for case in options.cases.split(","):
        for network in (0, 1, 2):
            for tile in options.tiles.split(","):
                rows, columns, warps = map(int, tile.split("x"))
                constants = program_constants(case, network, rows, columns)
                for name in PROGRAMS:
                    started = time.perf_counter()
                    compiled = compiled_for_sm90(getattr(kernels, name), case, constants, warps)
                    shared = compiled.metadata.shared
                    fits = "fits" if shared <= H100_SHARED_MEMORY else "TOO LARGE for an H100"
                    cores = ", ".join(f"{count} {kind}" for kind, count in tensor_core_instructions(compiled).items())
                    print(f"{case} network {network} tiles {tile} {name}: {shared / 1024:.1f} KiB shared, {fits}; "
                          f"tensor cores: {cores or 'none'} "
                          f"({time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
