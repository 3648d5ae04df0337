"""The Triton kernel's programs compiled for an sm_90 GPU (H100, H200) on a machine without one.

    PYTHONPATH=.:/path/to/triton python -m experiments.triton_compile_check [--tiles 64x64x4,128x64x8]

Triton compiles a program for a target without its GPU: AST, TTIR, PTX, then the wheel's own
ptxas to a cubin. For each case (fp32, fp64, and run.utility_precision's bf16 and tf32
products), network kind (0 none, 1 bias, 2 byte mask) and tile size (buyers x sellers x
warps) this prints the shared memory each program asks for (at Triton's default pipeline
stages) against an H100's limit per program, and the tensor-core instructions in its PTX,
with d_k = d = 32 (the benchmark economy's); with ``--loops``, each program's loops counted
(:func:`loop_instructions`), the rows' pass in one loop and in two. tests/test_triton.py
compiles the default CUDA tiles so; docs/performance.md ("The Triton kernel") reports a run of this sweep.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import torch

from econspin.fused import exp2_limits
from econspin.triton_blocks import PRODUCT_PRECISIONS
from econspin.triton_programs import PROGRAMS, programs

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


def program_constants(
    case: str, network: int, rows: int, columns: int, keys: int = 32, values: int = 32, one_pass: bool = True
) -> dict:
    """Every constexpr of the programs for a case of :data:`CASES`, the network kind and a tile.

    ``keys`` and ``values``: the padded widths of the two products (d_k = 32 and d = 32);
    ``one_pass``: the rows' pass's ONE_PASS (econspin.triton_blocks.Tiles.one_pass).
    """
    working, _, precision = CASES[case]
    big, floor = exp2_limits(WORKING_DTYPES[working])
    utilities, received = PRODUCT_PRECISIONS[precision]  # what econspin.triton_blocks launches the programs with
    return dict(KEYS_PADDED=keys, VALUES_PADDED=values, NETWORK=network, BIG=big, BLOCK_ROWS=rows,
                BLOCK_COLUMNS=columns, FLOOR=floor, THRESHOLD=2.0 ** (floor + 1), UTILITIES=utilities,
                RECEIVED=received, ONE_PASS=one_pass, MOMENTS=True)  # fmt: skip


def compiled_for_sm90(program, case: str, constants: dict, warps: int):
    """``program`` (a triton.jit copy, econspin.triton_programs.programs(False)) compiled for sm_90 here."""
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
        elif name in ("revenue", "uniforms"):
            signature[name] = "*fp64"
        elif name == "choice":
            signature[name] = "*i64"
        elif name in POINTER_ARGUMENTS:
            signature[name] = f"*{low}" if name in LOW_OPERANDS else f"*{dtype}"
        else:
            signature[name] = "i32"
    source = ASTSource(program, signature, {name: value for name, value in constants.items() if name in signature})
    return triton_compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def tensor_core_instructions(compiled) -> dict[str, int]:
    """The tensor-core instructions in a compiled program's PTX, by name (shape and operand types), with counts."""
    return dict(collections.Counter(TENSOR_CORE_INSTRUCTION.findall(compiled.asm["ptx"])))


LOOP_HEADER = re.compile(r"^\$L__(BB\d+_\d+):\s*// =>This Inner Loop Header")
BLOCK_LABEL = re.compile(r"^\$L__(BB\d+_\d+):")
BRANCH = re.compile(r"^(@!?%p\d+\s+)?bra(\.uni)?\s+\$L__(BB\d+_\d+);")
PREDICATE = re.compile(r"^@!?%p\d+\s+")


def loop_instructions(ptx: str) -> list[dict]:
    """Each loop of a program's PTX, in order: its instructions, and its FMAs, exp2s and tensor-core ones among them.

    A loop is every block on a cycle through a block LLVM marks as a loop's header (the
    strongly connected part of the control flow graph that holds it). Every branch inside the
    loop is counted, both sides of the interior-tile test included: a tile runs one of them.
    """
    blocks, order = {"entry": []}, ["entry"]
    for line in ptx.splitlines():
        label = BLOCK_LABEL.match(line)
        if label:
            order.append(label.group(1))
            blocks[label.group(1)] = [line]
        else:
            blocks[order[-1]].append(line.strip())
    successors = {}
    for index, name in enumerate(order):
        branches = [BRANCH.match(line) for line in blocks[name]]
        successors[name] = {branch.group(3) for branch in branches if branch}
        unconditional = any(branch and not branch.group(1) for branch in branches)
        if index + 1 < len(order) and not unconditional and "ret;" not in blocks[name]:
            successors[name].add(order[index + 1])  # falls through
    predecessors = {name: {other for other in order if name in successors[other]} for name in order}
    loops = []
    for name in order:
        if LOOP_HEADER.match(blocks[name][0]):
            body = reached(name, successors) & reached(name, predecessors)
            operations = collections.Counter()
            for line in (line for block in order if block in body for line in blocks[block][1:]):
                if line.endswith(";") and not line.startswith((".", "//")):
                    operations[PREDICATE.sub("", line).split()[0].split(".")[0]] += 1
            counts = {"instructions": sum(operations.values()), "fma": operations["fma"], "ex2": operations["ex2"]}
            loops.append(counts | {"tensor cores": operations["wgmma"] + operations["mma"]})
    return loops


def reached(start: str, edges: dict[str, set[str]]) -> set[str]:
    """The blocks reached from ``start`` along ``edges`` (successors or predecessors), ``start`` among them."""
    seen, waiting = {start}, [start]
    while waiting:
        for following in edges[waiting.pop()] - seen:
            seen.add(following)
            waiting.append(following)
    return seen


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiles", default="64x64x4,128x64x8,128x128x8", help="buyers x sellers x warps, comma-separated"
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: fp32, fp64, bf16 (bf16 products)")
    parser.add_argument(
        "--loops", action="store_true", help="also each program's loops (loop_instructions), one pass and two"
    )
    options = parser.parse_args(arguments)
    kernels = programs(False)
    for case in options.cases.split(","):
        for network in (0, 1, 2):
            for tile in options.tiles.split(","):
                for name in PROGRAMS:
                    for one_pass in (True, False) if options.loops and name == "row_sums_program" else (True,):
                        report(getattr(kernels, name), case, network, tile, one_pass, options.loops)


def report(program, case: str, network: int, tile: str, one_pass: bool, loops: bool) -> None:
    """Print what one program compiled for sm_90 asks for: shared memory, tensor-core instructions (and its loops)."""
    rows, columns, warps = map(int, tile.split("x"))
    constants = program_constants(case, network, rows, columns, one_pass=one_pass)
    started = time.perf_counter()
    compiled = compiled_for_sm90(program, case, constants, warps)
    shared = compiled.metadata.shared
    fits = "fits" if shared <= H100_SHARED_MEMORY else "TOO LARGE for an H100"
    cores = ", ".join(f"{count} {kind}" for kind, count in tensor_core_instructions(compiled).items())
    name = program.fn.__name__ if hasattr(program, "fn") else program.__name__
    label = f"{name} (ONE_PASS {one_pass})" if "ONE_PASS" in program.arg_names else name
    print(f"{case} network {network} tiles {tile} {label}: {shared / 1024:.1f} KiB shared, {fits}; "
          f"tensor cores: {cores or 'none'} ({time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip
    if loops:
        print(f"    loops: {loop_instructions(compiled.asm['ptx'])}", flush=True)


if __name__ == "__main__":
    main()
