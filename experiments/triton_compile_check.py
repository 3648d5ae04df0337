"""The Triton kernel's programs compiled for an sm_90 GPU (H100, H200) on a machine without one.

    PYTHONPATH=.:/path/to/triton python -m experiments.triton_compile_check [--tiles 64x64x4,128x64x8]

Triton compiles a program for a target without its GPU: AST, TTIR, PTX, then the wheel's own
ptxas to a cubin. For each dtype, network kind (0 none, 1 bias, 2 byte mask) and tile size
(buyers x sellers x warps) this prints the shared memory each program asks for (at Triton's
default pipeline stages) against an H100's limit per program, with d_k = d = 32 (the
benchmark economy's). tests/test_triton.py compiles the default CUDA tiles so;
docs/performance.md ("The Triton kernel") reports a run of this sweep.
"""

from __future__ import annotations

import argparse
import time

from econspin.triton_kernels import programs

H100_SHARED_MEMORY = 232448  # bytes of shared memory one program may use on sm_90 (227 KiB)
POINTER_ARGUMENTS = {
    "left",
    "right",
    "shifted_max",
    "tie_width",
    "values",
    "total",
    "norm",
    "dot",
    "moments",
    "per_unit",
}
PROGRAMS = ("row_max_program", "row_sums_program", "revenue_program")
LIMITS = {"fp32": (2.0**120, -126.0), "fp64": (2.0**1016, -1022.0)}  # BIG and the exp2 floor (econspin.fused)


def program_constants(dtype: str, network: int, rows: int, columns: int, padded: int = 64) -> dict:
    """Every constexpr of the three programs for ``dtype`` ("fp32", "fp64"), the network kind and a tile."""
    big, floor = LIMITS[dtype]
    return dict(KEYS_PADDED=padded, VALUES_PADDED=padded, NETWORK=network, BIG=big, BLOCK_ROWS=rows,
                BLOCK_COLUMNS=columns, FLOOR=floor, THRESHOLD=2.0 ** (floor + 1))  # fmt: skip


def compiled_for_sm90(program, dtype: str, constants: dict, warps: int):
    """``program`` (a triton.jit copy, econspin.triton_kernels.programs(False)) compiled for sm_90 here."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    signature = {}
    for name in program.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name == "network":
            signature[name] = "*u8" if constants["NETWORK"] == 2 else f"*{dtype}"
        elif name == "revenue":
            signature[name] = "*fp64"
        else:
            signature[name] = f"*{dtype}" if name in POINTER_ARGUMENTS else "i32"
    source = ASTSource(program, signature, {name: value for name, value in constants.items() if name in signature})
    return triton_compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiles", default="64x64x4,128x64x8,128x128x8", help="buyers x sellers x warps, comma-separated"
    )
    options = parser.parse_args(arguments)
    kernels = programs(False)
    for dtype in LIMITS:
        for network in (0, 1, 2):
            for tile in options.tiles.split(","):
                rows, columns, warps = map(int, tile.split("x"))
                constants = program_constants(dtype, network, rows, columns)
                for name in PROGRAMS:
                    started = time.perf_counter()
                    compiled = compiled_for_sm90(getattr(kernels, name), dtype, constants, warps)
                    shared = compiled.metadata.shared
                    fits = "fits" if shared <= H100_SHARED_MEMORY else "TOO LARGE for an H100"
                    print(f"{dtype} network {network} tiles {tile} {name}: {shared / 1024:.1f} KiB shared, {fits} "
                          f"({time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
