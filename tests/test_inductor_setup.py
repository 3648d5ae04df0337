"""econspin.inductor_setup: Inductor's code generation spared work it repeats, with the library's results.

Its dtype rules built once per registered set, the same rules as the library's; a range
intersected with an equal one returned as it is, any other pair by the library's intersection;
whole int64 and int32 vectors loaded without a count, tails and other dtypes as the library loads
them; float tiles transposed by ATen's sized template; the compiled values the eager ones.
"""

import re
import sys
from types import SimpleNamespace

import pytest
import sympy
import torch
import torch._inductor.config as inductor_config
import torch._inductor.lowering  # noqa: F401 (registers the rules, as Inductor has before it generates code)
import torch._inductor.utils as inductor_utils
from torch._inductor.codegen.cpp import CppVecKernel
from torch._inductor.cpu_vec_isa import pick_vec_isa
from torch._inductor.dtype_propagation import DtypePropagationOpsHandler
from torch.utils._sympy.value_ranges import ValueRanges

from econspin.inductor_setup import (
    ONCE_MARK,
    build_dtype_rules_once,
    intersect_equal_ranges_at_once,
    load_whole_integer_vectors,
    prepare_code_generation,
    transpose_float_tiles_by_vectors,
    with_vector_transposes,
)


def rules(handler) -> dict:
    """Each rule of a handler as (function, keywords): partials of the same rule are equal, not identical."""
    return {name: (value.func, value.keywords) for name, value in vars(handler).items() if hasattr(value, "func")}


def counted_builds(monkeypatch) -> list:
    """A list that grows by one each time the library's __init__ runs (it asks for the boolean ops once a build)."""
    builds, library_boolean_ops = [], inductor_utils.boolean_ops

    def counted():
        builds.append(1)
        return library_boolean_ops()

    monkeypatch.setattr(inductor_utils, "boolean_ops", counted)
    return builds


def test_the_handler_builds_its_rules_once_and_they_are_the_librarys(monkeypatch):
    assert build_dtype_rules_once() and build_dtype_rules_once()  # installed, and a second call keeps it
    assert getattr(DtypePropagationOpsHandler.__init__, ONCE_MARK)
    assert not hasattr(DtypePropagationOpsHandler.__init__.__wrapped__, ONCE_MARK)  # wrapped once, not twice
    DtypePropagationOpsHandler()
    builds = counted_builds(monkeypatch)
    handler = DtypePropagationOpsHandler()
    for _ in range(5):
        assert DtypePropagationOpsHandler() is handler
    assert builds == []
    fresh = object.__new__(DtypePropagationOpsHandler)  # the library's own build, on an instance of its own
    DtypePropagationOpsHandler.__init__.__wrapped__(fresh)
    assert builds == [1]
    assert len(rules(fresh)) > 100 and rules(handler) == rules(fresh)
    single, double = SimpleNamespace(dtype=torch.float32), SimpleNamespace(dtype=torch.float64)  # as CSE variables
    assert handler.add(single, double) == fresh.add(single, double) == torch.float64
    assert handler.isnan(double) == torch.bool and handler.to_dtype(single, torch.int64) == torch.int64


def test_a_rule_registered_later_is_built_in(monkeypatch):
    build_dtype_rules_once()
    DtypePropagationOpsHandler()
    builds = counted_builds(monkeypatch)
    rule = inductor_utils.OpDtypeRule(type_promotion_kind=None, override_return_dtype=torch.int16)
    monkeypatch.setitem(inductor_utils.op_dtype_propagation_rules, "econspin_test_rule", rule)
    handler = DtypePropagationOpsHandler()
    assert builds == [1] and handler.econspin_test_rule(torch.float32) == torch.int16
    DtypePropagationOpsHandler()
    assert builds == [1]
    monkeypatch.undo()  # the registry as it was: the next construction builds again
    builds = counted_builds(monkeypatch)
    DtypePropagationOpsHandler()
    assert builds == [1]
    del handler.econspin_test_rule


def test_equal_ranges_intersect_to_themselves_and_other_pairs_as_the_library_intersects_them():
    assert prepare_code_generation() and intersect_equal_ranges_at_once()  # installed, and a second call keeps it
    intersect = ValueRanges.__and__
    assert getattr(intersect, ONCE_MARK) and not hasattr(intersect.__wrapped__, ONCE_MARK)  # wrapped once
    library = intersect.__wrapped__
    ranges = [
        ValueRanges(0, 2**63 - 1),
        ValueRanges(-(2**63), 2**63 - 1),
        ValueRanges(sympy.Float(-6.5), sympy.Float(7.25)),
        ValueRanges(sympy.Float(0.0), sympy.oo),
        ValueRanges(sympy.false, sympy.true),
        ValueRanges(sympy.true, sympy.true),
        ValueRanges(-3, 11),
        ValueRanges(sympy.Float(-1.0), sympy.Float(2.5)),
        ValueRanges.unknown(),
        ValueRanges.unknown_int(),
    ]
    for first in ranges:
        equal = ValueRanges(first.lower, first.upper)  # another object, the same range
        assert (first & equal) is first and (first & first) is first
        assert library(first, equal) == first  # what the library would have built
        for second in ranges:
            kinds = (first.is_bool, first.is_int, first.is_float) == (second.is_bool, second.is_int, second.is_float)
            unknown = {ValueRanges.unknown(), ValueRanges.unknown_int()} & {first, second}
            if kinds or unknown:
                assert (first & second) == library(first, second), (first, second)
    assert ValueRanges(0, 5) & ValueRanges(3, 9) == ValueRanges(3, 5)
    certain = ValueRanges(sympy.true, sympy.true)
    assert ValueRanges(sympy.false, sympy.true) & certain == certain


def _float_lanes() -> int:
    """The float32 lanes of the vectors Inductor writes here (its tiling factor); the test skipped without any."""
    isa = pick_vec_isa()
    if not isa:
        pytest.skip("Inductor writes no vector code on this CPU")
    return isa.nelements(torch.float32)


def _compiled_afresh(function, *arguments) -> tuple[torch.Tensor, str]:
    """``function`` compiled with no cache to read from: its value and its generated code."""
    torch._dynamo.reset()
    with inductor_config.patch(force_disable_caches=True):
        value, code = inductor_utils.run_and_get_code(torch.compile(function, dynamic=False), *arguments)
    return value, "\n".join(code)


def _words_to_floats(words: torch.Tensor, counts: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Integers of two widths and floats loaded contiguously, as the Gaussians' words are."""
    return ((words >> 32) & 0xFFFFFFFF).to(torch.float32) * scales + counts.to(torch.float32)


def test_whole_integer_vectors_are_loaded_without_a_count_and_give_the_eager_values():
    lanes = _float_lanes()  # the kernel's whole vector
    assert prepare_code_generation() and load_whole_integer_vectors()  # installed, and a second call keeps it
    load_line = CppVecKernel._get_vec_load_line
    assert getattr(load_line, ONCE_MARK) and not hasattr(load_line.__wrapped__, ONCE_MARK)  # wrapped once
    agents = 125 * lanes + 3  # whole vectors and a tail of 3
    generator = torch.Generator().manual_seed(11)
    words = torch.randint(-(2**62), 2**62, (agents,), dtype=torch.int64, generator=generator)
    counts = torch.randint(-(2**20), 2**20, (agents,), dtype=torch.int32, generator=generator)
    scales = torch.rand(agents, generator=generator)
    got, source = _compiled_afresh(_words_to_floats, words, counts, scales)
    assert torch.equal(got, _words_to_floats(words, counts, scales))
    loads = re.findall(r"(int64_t|int32_t|float)(?:,\d+)?>::loadu\(in_ptr\d \+ [^;]*?\)(, [^;]*?\))?;", source)
    # whole vectors: the integers' without a count, a float's with the library's (its loadu tests for it)
    assert {(dtype, count) for dtype, count in loads if not count.endswith("L))")} == {
        ("int64_t", ""),
        ("int32_t", ""),
        ("float", f", static_cast<int64_t>({lanes}))"),
    }, loads
    tail = ", static_cast<int64_t>(3L))"  # the tail loop keeps its count
    assert {(dtype, count) for dtype, count in loads if count.endswith("L))")} == {
        ("int64_t", tail),
        ("int32_t", tail),
        ("float", tail),
    }, loads


def test_float_tile_transposes_call_atens_sized_template_and_nothing_else_changes():
    inductor_call = (
        "transpose_mxn<float,static_cast<int64_t>(8),static_cast<int64_t>(8),false>(tmp18, 8, out_ptr2, 8208L);"
    )
    assert with_vector_transposes(inductor_call) == "at::vec::transpose_mxn<float,8,8>(tmp18, 8, out_ptr2, 8208L);"
    tail = "transpose_mxn<float,static_cast<int64_t>(8),static_cast<int64_t>(3L),false>(a, 8, b, 3L);"
    assert with_vector_transposes(tail) == "at::vec::transpose_mxn<float,8,3>(a, 8, b, 3L);"
    unchanged = [
        "transpose_mxn<float,static_cast<int64_t>(8),static_cast<int64_t>(8),true>(a, 8, b, 8);",  # atomic adds
        "transpose_mxn<double,static_cast<int64_t>(8),static_cast<int64_t>(8),false>(a, 8, b, 8);",
        "at::vec::transpose_mxn<float,8,8>(a, 8, b, 8);",  # already ATen's
        "transpose_mxn<float,false>(a, 8, b, 8, M, N);",  # run-time sizes
    ]
    for line in unchanged:
        assert with_vector_transposes(line) == line


def _doubled_transposed(x: torch.Tensor) -> torch.Tensor:
    """A float32 tile read across layouts: Inductor writes it through a transposed tile."""
    return (x * 2.0 + 1.0).t().contiguous()


def test_a_compiled_transpose_of_floats_uses_atens_sized_template_and_gives_the_eager_values():
    lanes = _float_lanes()
    assert prepare_code_generation() and transpose_float_tiles_by_vectors()  # installed, and a second call keeps it
    x = torch.randn(16 * lanes, 8 * lanes + 3, generator=torch.Generator().manual_seed(5))
    got, source = _compiled_afresh(_doubled_transposed, x)
    assert torch.equal(got, _doubled_transposed(x))
    assert f"at::vec::transpose_mxn<float,{lanes},{lanes}>(" in source
    assert "transpose_mxn<float,static_cast" not in source


@pytest.mark.slow
def test_the_compile_time_experiment_builds_each_way_in_its_own_process_and_finds_the_same_code(capsys, monkeypatch):
    """experiments.compile_time on a small expected economy: every way writes the files the full setup writes."""
    from experiments import compile_time

    arguments = ["--mode", "expected", "--agents", "8", "--dimension", "2", "--ways", "full,library"]
    monkeypatch.setattr(sys, "argv", ["compile_time", *arguments])
    compile_time.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "expected round, B = 1, N = 8, d = 2" and len(lines) == 3
    assert all("same files" in line and " 0 files" not in line for line in lines[1:]), lines
