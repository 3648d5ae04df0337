"""`econspin bench`: the structure of its table and JSON, never its timings."""

import json
import sys
import types

import pytest
import torch
from helpers import needs_triton
from typer.testing import CliRunner

from econspin.bench import SIZES
from econspin.bench_baselines import SECTIONS
from econspin.cli import app

runner = CliRunner()
ROW_FIELDS = {
    "mode",
    "agents",
    "batch",
    "pairs",
    "repeats",
    "floor_ms",
    "reference_ms",
    "fused_ms",
    "reference_ratio",
    "fused_ratio",
    "reference_pairs_per_s",
    "fused_pairs_per_s",
    "speedup",
    "compared",
    "state_difference",
    "money_difference",
}


def check_result(path, sizes, batches, modes=("expected",)):
    result = json.loads(path.read_text())
    assert result["torch"] == torch.__version__
    assert result["device"] and result["device_type"] == "cpu" and result["threads"] >= 1
    assert result["clock"] in ("wall", "cpu")
    assert result["modes"] == list(modes)
    assert [(row["mode"], row["agents"], row["batch"]) for row in result["rows"]] == [
        (mode, n, b) for mode in modes for n in sizes for b in batches
    ]
    for row in result["rows"]:
        assert set(row) == ROW_FIELDS
        assert row["floor_ms"] > 0 and row["fused_ms"] > 0
        assert row["pairs"] == row["batch"] * row["agents"] ** 2
        if row["reference_ms"] is not None:  # both kernels ran: their next rounds were compared
            assert row["compared"] and row["state_difference"] < 1e-4 and row["money_difference"] < 1e-6
    return result


def test_bench_writes_a_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    arguments = ["bench", "--quick", "--sizes", "48,96", "--batches", "1,3", "--repeats", "1", "--json", str(out)]
    arguments += ["--baselines", "floors"]  # the other baselines: tests/test_bench_baselines.py
    result = runner.invoke(app, [*arguments, "--threads", "1", "--clock", "cpu", "--modes", "expected,sampled"])
    assert result.exit_code == 0, result.output
    assert "fused/SDPA" in result.output and "max diff" in result.output and "sampled" in result.output
    rows = check_result(out, (48, 96), (1, 3), ("expected", "sampled"))["rows"]
    assert all(row["compared"] for row in rows)  # the sampled kernels drew the same sellers: the same next rounds


def test_bench_refuses_bad_sizes_and_modes():
    result = runner.invoke(app, ["bench", "--sizes", "1,x"])
    assert result.exit_code == 2 and "--sizes" in result.output
    result = runner.invoke(app, ["bench", "--modes", "expected,sampeld"])
    assert result.exit_code == 2 and "--modes" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["bench", "--kernels", "fused,flux"])
    assert result.exit_code == 2 and "--kernels 'fused,flux'" in result.output and "Traceback" not in result.output


def test_bench_times_the_flex_kernel_when_asked(tmp_path):
    """The FlexAttention kernel beside the fused one, expected mode only; the sampled rows leave it out."""
    out = tmp_path / "bench.json"
    arguments = ["bench", "--sizes", "32", "--batches", "2", "--repeats", "1", "--json", str(out), "--threads", "1"]
    arguments += ["--baselines", "none", "--kernels", "fused,flex", "--modes", "expected,sampled"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "flex/SDPA" in result.output
    saved = json.loads(out.read_text())
    assert saved["kernels"] == ["fused", "flex"]
    expected, sampled = saved["rows"]
    assert set(expected) == ROW_FIELDS | {"flex_ms", "flex_ratio", "flex_pairs_per_s", "flex_difference"}
    assert expected["reference_ms"] is None and expected["fused_ms"] > 0 and expected["flex_ms"] > 0
    assert expected["flex_difference"] < 1e-5
    assert sampled["flex_ms"] is None and sampled["flex_difference"] is None


@needs_triton
def test_bench_times_the_triton_kernel_and_its_bf16_products_when_asked(tmp_path):
    """The Triton kernel beside the fused one (interpreted on a CPU, at tiny N alone), and at --utilities bfloat16."""
    out = tmp_path / "bench.json"
    arguments = ["bench", "--sizes", "32,256", "--batches", "1", "--repeats", "1", "--json", str(out)]
    arguments += ["--threads", "1", "--baselines", "none", "--kernels", "fused,triton", "--utilities", "bfloat16"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "triton/SDPA" in result.output and "triton low ms" in result.output
    saved = json.loads(out.read_text())
    assert saved["kernels"] == ["fused", "triton"]
    small, large = saved["rows"]
    triton_fields = {"triton_ms", "triton_ratio", "triton_pairs_per_s", "triton_difference"}
    low_fields = {"low_ms", "low_floor_ms", "low_ratio", "low_speedup", "low_pairs_per_s", "low_difference"}
    triton_low = {"triton_low_ms", "triton_low_pairs_per_s", "triton_low_difference"}
    assert set(small) == ROW_FIELDS | triton_fields | low_fields | triton_low
    assert small["triton_ms"] > 0 and small["triton_difference"] < 1e-5
    assert small["triton_low_ms"] > 0 and 1e-6 < small["triton_low_difference"] < 0.1  # bf16: rounded, and close
    assert large["triton_ms"] is None and "triton_low_ms" not in large  # N = 256 is past the interpreter's size


@needs_triton
def test_bench_times_the_triton_kernel_in_sampled_mode(tmp_path):
    """Sampled rows time the Triton draw too: the fused kernel's sellers, so the same next round to rounding."""
    out = tmp_path / "bench.json"
    arguments = ["bench", "--sizes", "32", "--batches", "1,2", "--repeats", "1", "--json", str(out), "--threads", "1"]
    result = runner.invoke(app, [*arguments, "--baselines", "none", "--kernels", "fused,triton", "--modes", "sampled"])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [row["mode"] for row in rows] == ["sampled", "sampled"]
    assert all(row["triton_ms"] > 0 and row["triton_difference"] < 1e-5 for row in rows)


def test_bench_refuses_the_triton_kernel_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # importlib then finds no triton
    result = runner.invoke(app, ["bench", "--kernels", "fused,triton", "--quick"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--kernels triton needs the triton package" in result.output


@pytest.mark.slow
def test_bench_quick_as_documented(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    result = check_result(out, SIZES[True], (1, 16))
    assert sum(row["compared"] for row in result["rows"]) >= 4
    assert all(result[name] for name in SECTIONS)  # every baseline section measured in the same run


def test_the_ensemble_benchmark_times_steady_rounds_of_each_case(capsys, monkeypatch):
    """experiments.benchmark_ensemble: each case plays turns of --block rounds, the first of each turn not counted."""
    from econspin import traced_blocks
    from experiments import benchmark_ensemble

    arguments = ["--agents", "8", "--batch", "2", "--repeats", "2", "--threads", "1", "--block", "2"]
    benchmark_ensemble.main(arguments)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("B = ")]
    assert len(rows) == 4 and all(float(row.split("cpu")[1].split("ms")[0]) > 0 for row in rows)
    seen = []  # --operator-blocks: no round traces its blocks while it times, and the switch is as it was after
    monkeypatch.setattr(benchmark_ensemble, "ensemble", lambda *_, **__: seen.append(traced_blocks.TRACED_DEVICES))
    monkeypatch.setattr(benchmark_ensemble, "interleaved_times", lambda cases, *_: dict.fromkeys(cases, (1.0, 1.0)))
    benchmark_ensemble.main([*arguments, "--operator-blocks"])
    assert seen == [()] * 4 and traced_blocks.TRACED_DEVICES == ("cpu", "cuda")
    monkeypatch.undo()

    played, durations, clock = [], iter([10.0, 1.0] * 4), {"now": 0.0, "round": None}
    monkeypatch.setattr(benchmark_ensemble, "step", lambda state, economy: played.append(economy))

    def process_time():  # read at a round's start, then at its end: the first round of a turn lasts 10 s
        if clock["round"] is None:
            clock["round"] = next(durations)
        else:
            clock["now"], clock["round"] = clock["now"] + clock["round"], None
        return clock["now"]

    clocks = types.SimpleNamespace(perf_counter=benchmark_ensemble.time.perf_counter, process_time=process_time)
    monkeypatch.setattr(benchmark_ensemble, "time", clocks)  # this module's clock only
    state = types.SimpleNamespace(states=torch.zeros(1))  # what the timing reads of a state: its device
    times = benchmark_ensemble.interleaved_times({"a": (state, "a"), "b": (state, "b")}, repeats=2, block=2)
    assert played == ["a", "a", "b", "b"] * 2
    assert times["a"][1] == times["b"][1] == 1.0  # counted, the 10 s would make the median 5.5


def test_the_kernel_loop_timer_reads_each_nest_and_leaves_the_kernel_s_results():
    """experiments.compiled_kernel_loops: a kernel in Inductor's form, a clock reading after each top-level nest.

    The instrumented source is compiled by Inductor's own builder and run: it writes what the
    kernel wrote, and its library hands back one sum a nest and the count of calls.
    """
    from experiments import compiled_kernel_loops

    source = "\n".join([
        "#include <torch/csrc/inductor/cpp_prefix.h>",
        'extern "C"  void  kernel(float* out_ptr0)',
        "{",
        "    {",
        "        for(int64_t x0=static_cast<int64_t>(0L); x0<static_cast<int64_t>(4L); x0+=static_cast<int64_t>(1L))",
        "        {",
        "            for(int64_t x1=static_cast<int64_t>(0L); x1<static_cast<int64_t>(3L); "
        "x1+=static_cast<int64_t>(1L))",
        "            {",
        "                out_ptr0[static_cast<int64_t>(x1 + 3L*x0)] = static_cast<float>(x0 + x1);",
        "            }",
        "        }",
        "    }",
        "    {",
        "        out_ptr0[static_cast<int64_t>(12L)] = static_cast<float>(7.0);",
        "    }",
        "}",
    ])  # fmt: skip
    reader = "nest_seconds_test_kernel_loops"
    instrumented, ranges = compiled_kernel_loops.instrumented(source, reader)
    assert ranges == ["4 x 3", "(no loop)"]
    assert instrumented.count("__nest_seconds[0] +=") == 1 and instrumented.count("__nest_seconds[1] +=") == 1
    kernel = compiled_kernel_loops.compiled_kernel(["float*"], instrumented)
    out = torch.zeros(13)
    for _ in range(3):
        kernel(out)
    assert out.tolist() == [float(row + column) for row in range(4) for column in range(3)] + [7.0]
    *seconds, calls = compiled_kernel_loops.nest_sums(reader, len(ranges))
    assert calls == 3 and all(0.0 <= value < 1.0 for value in seconds)
