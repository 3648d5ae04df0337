"""``econspin bench``: one round of each kernel against the attention floor, and the baselines.

A rim of the command line (:mod:`econspin.cli`) around :mod:`econspin.bench` and
:mod:`econspin.bench_baselines`: the options are checked, and ``--json`` found writable, before
anything is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from econspin.cli import CompileOption, app, console, fail
from econspin.compiled import COMPILE_MODES, CompilerMissing, require_compiler
from econspin.economy import resolve_device
from econspin.output import check_writable, write_json
from econspin.precision import UTILITY_PRECISIONS, precision_conflict
from econspin.scenario import ScenarioError
from econspin.triton_blocks import triton_missing


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="N up to 4096, 3 repeats: under a minute on 2 cores.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    json_file: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch threads (default: torch's).")] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Comma-separated N (default 256,1024,4096[,16384]).")] = None,
    batches: Annotated[Optional[str], typer.Option(help="Comma-separated B (default 1,16).")] = None,
    repeats: Annotated[
        Optional[int], typer.Option(min=1, help="Timed repeats per case (default 3 quick, 7 full).")
    ] = None,
    clock: Annotated[str, typer.Option(help="wall, or cpu: process CPU time (blind to waiting for a core).")] = "wall",
    modes: Annotated[str, typer.Option(help="Comma-separated market modes: expected, sampled.")] = "expected",
    baselines: Annotated[
        Optional[str],
        typer.Option(help="Baselines: all (default), none, or some of reference,boltzmann,sweep,memory,floors."),
    ] = None,
    compile_mode: CompileOption = None,
    utilities: Annotated[
        str,
        typer.Option(help="Also time the fused round at this run.utility_precision: full (no), bfloat16, tf32."),
    ] = "full",
    kernels: Annotated[
        str,
        typer.Option(
            help="Comma-separated kernels to time: reference, fused, flex (FlexAttention; slow on a CPU), triton "
            "(for a GPU; a CPU's interpreter runs it at tiny N alone; with --utilities also at that precision)."
        ),
    ] = "reference,fused",
):
    """Time one round of the reference and fused kernels against the attention floor (SDPA), and the baselines."""
    from econspin.bench import KERNELS, MODES, bench_table, run_bench
    from econspin.bench_baselines import baseline_tables, parse_sections

    def numbers(text: str | None, option: str, least: int) -> tuple[int, ...] | None:
        if text is None:
            return None
        try:
            values = tuple(int(part) for part in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < least:
            raise ScenarioError(f"{option} {text!r}: give comma-separated integers >= {least}")
        return values

    try:
        if clock not in ("wall", "cpu"):
            raise ScenarioError(f"--clock {clock!r}: wall or cpu")
        compile_mode = compile_mode or "off"
        if compile_mode not in COMPILE_MODES:
            raise ScenarioError(f"--compile {compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")
        require_compiler(compile_mode, resolve_device(device))
        chosen_modes = tuple(modes.split(","))
        if not set(chosen_modes) <= set(MODES) or len(set(chosen_modes)) != len(chosen_modes):
            raise ScenarioError(f"--modes {modes!r}: give expected, sampled or expected,sampled")
        if utilities not in UTILITY_PRECISIONS:
            raise ScenarioError(f"--utilities {utilities!r}: choose one of {', '.join(UTILITY_PRECISIONS)}")
        conflict = precision_conflict(utilities, "float32", resolve_device(device), "fused", "attention")
        if conflict:
            raise ScenarioError(conflict.replace("run.utility_precision", "--utilities"))
        chosen_kernels = tuple(kernels.split(","))
        if not set(chosen_kernels) <= set(KERNELS) or len(set(chosen_kernels)) != len(chosen_kernels):
            raise ScenarioError(f"--kernels {kernels!r}: give some of {', '.join(KERNELS)}, comma-separated")
        if "triton" in chosen_kernels and triton_missing():
            raise ScenarioError(triton_missing().replace("run.kernel: triton", "--kernels triton"))
        if json_file is not None:
            check_writable(json_file, "--json", folder=False)
        try:
            sections = parse_sections(baselines)
        except ValueError as error:
            raise ScenarioError(str(error)) from None
        result = run_bench(
            quick,
            device,
            threads,
            numbers(sizes, "--sizes", 2),
            numbers(batches, "--batches", 1),
            repeats,
            on_row=lambda row: console.print(
                f"{row['mode']}, N = {row['agents']}, B = {row['batch']}: done", highlight=False
            ),
            clock=clock,
            modes=chosen_modes,
            baselines=sections,
            compile_mode=compile_mode,
            utility_precision=utilities,
            kernels=chosen_kernels,
        )
    except (ScenarioError, CompilerMissing) as error:
        fail(str(error))
    # 5 more columns for --compile and for --utilities, 3 for flex and for triton, 3 more for triton's --utilities
    optional = sum(name in chosen_kernels for name in ("flex", "triton")) + ("triton" in chosen_kernels) * (
        utilities != "full"
    )
    width = 120 + 50 * (compile_mode != "off") + 50 * (utilities != "full") + 45 * optional
    wide = Console(width=max(width, Console().width))
    for table in (bench_table(result), *baseline_tables(result)):
        wide.print(table)
    if json_file is not None:
        write_json(json_file, result)
        console.print(f"wrote {json_file}")
