"""The compiled round (run.compile, econspin.compiled) against the eager round it compiles.

Inductor may regroup a sum or fuse a multiply and an add into one rounding, so the compiled
round agrees with the eager one to rounding, not bit for bit: in float64 a few ulps of the
largest value per operation, and a round chains a few hundred of them (and the TAP solver's
fixed point iterates on them), hence 1e-12 relative to each tensor's largest value, 10^4
times float64's epsilon. Sampled mode draws from the same counter-based numbers: the same
sellers give the same revenue, and the spins agree to the same tolerance (a different seller
would move a buyer's received signal, hence its spin, by order one).

Compilation takes seconds to tens of seconds here: one small case runs by default, the rest
are marked slow (pytest -m slow tests/test_compiled_round.py).
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from fused_cases import economies
from helpers import MISSING_COMPILER, needs_compiler, rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import TINY
from torch._inductor.utils import run_and_get_code
from typer.testing import CliRunner

import econspin.fused_sampled as fused_sampled
from econspin.bench_baselines import boltzmann_scenario
from econspin.cli import app
from econspin.compiled import SWITCHES, padded_width, stored, stored_where_measured
from econspin.fused import block_arguments, expected_blocks, round_terms
from econspin.fused_sampled import sampled_blocks
from econspin.metrics import measure, metric_functions
from econspin.output import load_checkpoint, save_checkpoint
from econspin.projections import rows_together
from econspin.randomness import round_draws, round_tag
from econspin.response import _norm_and_unit, sample_von_mises_fisher
from econspin.round import play_tagged, round_tag_tensor, step
from econspin.scenario import ScenarioError
from econspin.uniform import uses_uniform

TOLERANCE = 1e-12
FIELDS = ("states", "money", "revenue", "spending", "entropy", "surplus")


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test compiles from scratch and counts its own graphs (and no earlier test fills dynamo's cache)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def close(want: torch.Tensor, got: torch.Tensor, tolerance: float = TOLERANCE) -> bool:
    """|want - got| <= tolerance x the largest finite |want|; infinities (T = inf's surplus) and NaN equal."""
    want, got = want.double(), got.double()
    finite = want.isfinite() & got.isfinite()
    scale = torch.where(finite, want.abs(), 0.0).max().clamp(min=1e-300)
    same = (want == got) | (want.isnan() & got.isnan())
    return bool((same | (finite & ((want - got).abs() <= tolerance * scale))).all())


def compare_rounds(run, rounds: int, compile_mode: str = "default") -> None:
    """``rounds`` rounds eager and compiled from the same state: every recorded tensor agrees, each round."""
    eager_economy = run.economy
    compiled_economy = dataclasses.replace(eager_economy, compile=compile_mode)
    eager = compiled = run.state
    with torch.no_grad():
        for round_index in range(rounds):
            eager, compiled = step(eager, eager_economy), step(compiled, compiled_economy)
            for name in FIELDS:
                want, got = getattr(eager, name), getattr(compiled, name)
                assert close(want, got), f"round {round_index + 1}: {name} differs by {(want - got).abs().max()}"
            assert compiled.round == eager.round
    # the compiled path ran: dynamo built graphs, and no frame fell back to eager for too many recompilations
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert not torch._dynamo.utils.counters["stats"].get("recompile_limit_hit")


@pytest.fixture(params=["blocks traced", "blocks' operator"])
def blocks_way(request, monkeypatch):
    """A compiled round of one block both ways: its blocks traced into the graph (the default) or one operator node."""
    if request.param == "blocks' operator":
        monkeypatch.setattr("econspin.traced_blocks.TRACED_DEVICES", ())
    return request.param


@needs_compiler
def test_compiled_round_equals_the_eager_round_with_limits_of_temperature(blocks_way):
    """Expected mode, float64, agents at T = 0 and T = inf beside T = 1: three rounds agree to 1e-12."""
    populations = {
        "human": {"count": 6, "temperature": 1.0, "spend": 0.2},
        "cold": {"count": 3, "temperature": 0.0, "spend": 0.3},
        "hot": {"count": 3, "temperature": float("inf"), "spend": 0.1},
    }
    compare_rounds(rollout(scenario(populations=populations)), rounds=3)
    # one graph: the blocks traced into it or one node of it (a custom operator), the inverse temperatures traced
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


SLOW_CASES = {
    "sampled, limits of temperature": dict(
        mode="sampled",
        populations={
            "human": {"count": 6, "temperature": 1.0, "spend": 0.2},
            "cold": {"count": 3, "temperature": 0.0, "spend": 0.3},
            "hot": {"count": 3, "temperature": float("inf"), "spend": 0.1},
        },
    ),
    "expected, tap, two heads, visibility": dict(
        heads=2,
        visibility=0.5,
        populations={
            "human": {"count": 7, "temperature": 1.0, "spend": 0.2, "correction": {"form": "tap"}},
            "ai": {"count": 5, "temperature": 0.2, "spend": 0.3},
        },
    ),
    "sampled, vmf, two heads": dict(mode="sampled", heads=2, response="vmf"),
    "expected, dense network": dict(network={"generator": "gnp_random_graph", "params": {"p": 0.5}}),
    "sampled, dense network": dict(mode="sampled", network={"generator": "gnp_random_graph", "params": {"p": 0.5}}),
    "expected, non-buyers and non-sellers": dict(
        populations={
            "buyers": {"count": 6, "temperature": 0.5, "sells": False},
            "sellers": {"count": 4, "temperature": 1.0, "buys": False},
            "both": {"count": 3, "temperature": 0.1},
        }
    ),
    "sampled, d = 1 (Glauber)": dict(mode="sampled", d=1, response="vmf"),
}


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_compiled_round_equals_the_eager_round(case):
    """Modes, heads, corrections, networks, populations that only buy or only sell: 4 rounds agree to 1e-12."""
    compare_rounds(rollout(scenario(**SLOW_CASES[case])), rounds=4)


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sampled", "expected"])
def test_compiled_round_in_float32_agrees_to_float32_rounding(mode):
    """float32, the benchmark's precision: 1e-5 relative (states chain the float32 rounding of a round).

    Money is float64, but each seller's revenue carries the working precision's rounding (its
    blocks, traced into the compiled round, sum the weights in another order): 1e-6 relative
    each; the total is the budgets spent either way, to float64 rounding.
    """
    run = rollout(scenario(mode=mode), dtype="float32")
    eager = step(run.state, run.economy)
    compiled = step(run.state, dataclasses.replace(run.economy, compile="default"))
    assert close(eager.states, compiled.states, 1e-5) and close(eager.money, compiled.money, 1e-6)
    assert float(eager.money.sum()) == pytest.approx(float(compiled.money.sum()), rel=1e-12)


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sampled", "expected"])
def test_compiled_uniform_round_equals_the_eager_one(mode):
    """The O(N) uniform path (Boltzmann wealth) compiled: same sellers, same money, 5 rounds.

    Money drawn exponential, not the scenario's equal 1: in expected mode every agent then spends
    1 and receives (N - 1) / (N - 1), so after a round each holds 1 to within rounding, where the
    unit rule's threshold is, and the compiled and eager rounds' last bits decide who spends.
    """
    base = boltzmann_scenario(200).with_overrides(
        {"market.mode": mode, "populations.agents.money": {"distribution": "exponential", "mean": 2.0}}
    )
    run = rollout(base)
    assert uses_uniform(run.state, run.economy)
    compare_rounds(run, rounds=5)


@needs_compiler
@pytest.mark.slow
def test_reduce_overhead_mode_equals_the_eager_round():
    """Mode reduce-overhead (CUDA graphs on a GPU; the default compilation on the CPU)."""
    compare_rounds(rollout(scenario(mode="sampled")), rounds=2, compile_mode="reduce-overhead")


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_the_compiled_cpu_round_is_called_from_cpp_with_the_python_wrappers_bits(mode):
    """On the CPU Inductor's C++ wrapper calls the round's kernels and operators (compiled.CPP_WRAPPER_DEVICES).

    The same graph called from its Python wrapper gives the same bits: the wrapper calls, it does not compute.
    """
    run = rollout(scenario(mode=mode))
    economy = dataclasses.replace(run.economy, compile="default")
    tag = round_tag_tensor(run.state) if mode == "sampled" else None
    with torch.no_grad():
        got, sources = run_and_get_code(step, run.state, economy)
        torch._dynamo.reset()
        python_wrapper = torch.compile(play_tagged, mode="default", dynamic=False)
        states, money, outcome = python_wrapper(run.state, economy, tag)
    assert len(sources) == 1 and "cpp_wrapper_src" in sources[0]
    wanted = {"states": states, "money": money, "revenue": outcome.revenue, "spending": outcome.spending,
              "entropy": outcome.entropy, "surplus": outcome.surplus}
    for name, want in wanted.items():
        assert torch.equal(getattr(got, name), want), name


@needs_compiler
@pytest.mark.slow
def test_a_changed_setting_recompiles_the_round_whose_guards_leave_out_module_globals():
    """The guards the round keeps (compiled.round_guards) tell apart economies that differ in a setting, not a tensor.

    The budgets' rule, a string the trace reads: the second economy's compiled round is its eager round,
    from a graph of its own, not the first economy's. No guard reads a module global (``G[...]``) but
    the switches compiled.SWITCHES.
    """
    run = rollout(scenario())
    share = dataclasses.replace(run.economy, compile="default")
    unit = dataclasses.replace(share, spend_rule="unit")
    with torch.no_grad():
        first = step(run.state, share)
        got = step(run.state, unit)
        want = step(run.state, dataclasses.replace(unit, compile="off"))
    assert not torch.equal(first.spending, want.spending)  # the rule matters here
    for name in FIELDS:
        assert close(getattr(want, name), getattr(got, name)), name
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    entries = torch._dynamo.eval_frame._debug_get_cache_entry_list(play_tagged.__code__)
    guards = str(entries[0].guard_manager)
    on_globals = [line for line in guards.splitlines() if "G[" in line and ("MATCH" in line or "CHECK" in line)]
    assert "L['economy'].spend_rule" in guards and on_globals
    assert all(any(switch in line for switch in SWITCHES) for line in on_globals), on_globals


ROLLOUTS = {
    "sampled": lambda: scenario(mode="sampled", run={"compile": "default"}),
    # the network's bias is cached in the first round: the second traces the cached path once more
    "dense network": lambda: scenario(
        network={"generator": "gnp_random_graph", "params": {"p": 0.5}}, run={"compile": "default"}
    ),
    "uniform": lambda: boltzmann_scenario(100).with_overrides({"run.compile": "default"}),
}


@needs_compiler
@pytest.mark.parametrize("switch", ["OPERATOR_DEVICES", "TRACED_DEVICES", "STORED_DEVICES"])
def test_the_switches_are_guarded_among_module_globals(switch, monkeypatch):
    """Any of the switches (compiled.SWITCHES) flipped, as gpu_check's ways flip them, retraces the round.

    Without their guards the graph traced first served the flipped setting too: on the H100
    gpu_check's "blocks inside the graph" way replayed the other way's graph. The operator's
    switch is flipped with the blocks not traced (else the round never reads it). The stores'
    switch changes nothing an expected round computes: what is asked is the retrace.
    """
    from econspin import compiled, traced_blocks

    module = traced_blocks if switch == "TRACED_DEVICES" else compiled
    if switch == "OPERATOR_DEVICES":
        monkeypatch.setattr(traced_blocks, "TRACED_DEVICES", ())
    run = rollout(scenario(run={"compile": "default"}))
    with torch.no_grad():
        for _ in range(2):  # the second round reads the caches the first filled: traced with them
            step(run.state, run.economy)
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        monkeypatch.setattr(module, switch, ())
        step(run.state, run.economy)  # graph breaks around the blocks, or the blocks one operator
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before
        monkeypatch.setattr(module, switch, ("cpu",))
        again = step(run.state, run.economy)
    eager = step(run.state, dataclasses.replace(run.economy, compile="off"))
    assert all(close(getattr(eager, name), getattr(again, name)) for name in FIELDS)


@needs_compiler
def test_a_switch_flipped_after_a_graph_break_compiles_the_round_afresh(monkeypatch):
    """The blocks between the graphs (graph breaks around them), then traced: the traced round is one frame.

    round.switches_on guards the round's first frame on the switches. Read only where the blocks
    are, the frame compiled up to the first break kept its code when TRACED_DEVICES changed, and
    the traced way ran its blocks in the previous way's frames (gpu_check's ways on the H200).
    """
    from econspin import compiled, traced_blocks

    monkeypatch.setattr(compiled, "OPERATOR_DEVICES", ())
    monkeypatch.setattr(traced_blocks, "TRACED_DEVICES", ())
    run = rollout(scenario(run={"compile": "default"}))

    def frames_of_a_round() -> set[str]:
        step(run.state, run.economy)  # compiles where the setting is new
        with torch.profiler.profile() as profiler:
            step(run.state, run.economy)
        return {event.name for event in profiler.events() if event.name.startswith("Torch-Compiled Region")}

    with torch.no_grad():
        assert len(frames_of_a_round()) > 1  # the blocks between the graphs
        monkeypatch.setattr(traced_blocks, "TRACED_DEVICES", ("cpu",))
        assert len(frames_of_a_round()) == 1


@needs_compiler
def test_a_compiled_rollout_compiles_its_metrics_too():
    """Under run.compile the metrics after each round are a compiled graph beside the round's, equal to the eager ones.

    Eagerly they are some 60 operations a round: on a GPU as many launches as the compiled round's own.
    The helper's two populations: the wealth shares (one metric per population) are traced too.
    """
    run = rollout(scenario(run={"compile": "default"}))
    run.advance(3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the round, the metrics
    with torch.no_grad():
        want = measure(run.state, run.economy)  # eager
    assert want.shape == (1, len(metric_functions(run.economy))) and not want.isnan().any()
    assert close(want, run.rows[-1], 1e-12), (want - run.rows[-1]).abs().max()
    run.advance(3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # nothing traced again


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ROLLOUTS))
def test_a_compiled_rollout_compiles_once(case):
    """Twenty rounds of one economy: nothing compiled after the second round (the round index is not traced)."""
    run = rollout(ROLLOUTS[case]())
    run.advance(2)
    compiled_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    run.advance(18)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled_graphs


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("dimension", [2, 3, 16])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_compiled_spin_draw_takes_the_loops_draws(dimension, dtype):
    """The vMF draw compiled against the eager draw, kappa from 1e-2 to 1e4, T = 0, no field: 1e-9.

    Compiled, Wood's first attempts are traced and the loop over the agents left runs eagerly
    inside its operator (econspin::wood_rest, on the CPU).
    An attempt accepted compiled but not eagerly (or another attempt's w) would move the spin
    by order one. Not 1e-12: w = ((1 - b) - (1 + b) t) / ((1 + b) - (1 - b) t) cancels as t -> 1,
    with b ~ (d - 1) / (4 kappa), so its rounding (which Inductor may fuse differently) is
    eps / b relative: about 1e-11 at kappa = 1e4.

    In float32 the direction is drawn in float32: the compiled Gaussians' angles are reduced
    exactly, the eager ones rounded to float32 (test_randomness), and the compiled |theta| may
    differ in its last place: 2e-5 of R (6.2e-6 measured at d = 2, 4.6e-7 at d = 16), still far
    below an attempt accepted on one side only.
    """
    count = 2000
    generator = torch.Generator().manual_seed(dimension)
    theta = torch.randn(2, count, dimension, dtype=torch.float64, generator=generator)
    theta = theta * torch.logspace(-2, 4, count, dtype=torch.float64)[:, None] / theta.norm(dim=-1, keepdim=True)
    theta = theta.to(dtype)
    theta[0, :10] = 0.0
    temperature = torch.ones(2, count, dtype=dtype)
    temperature[1, :10] = 0.0
    draws = round_draws(torch.tensor([3, 4]), 7, count)
    with torch.no_grad():
        eager = sample_von_mises_fisher(theta, temperature, 1.5, draws)
        compiled = torch.compile(sample_von_mises_fisher, dynamic=False)(theta, temperature, 1.5, draws)
    assert compiled.dtype == dtype
    assert close(eager, compiled, 1e-9 if dtype == torch.float64 else 2e-5), (eager - compiled).abs().max()
    # one graph: the loop of Wood's step over the agents left is one operator of it (econspin::wood_rest)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("dimension", [3, 16])
def test_the_compiled_spin_draw_passes_the_fields_gradient_as_the_eager_one(dimension):
    """Compiled with a field that requires a gradient, the draw differentiates as eagerly does.

    Wood's loop is an operator with no autograd kernel (econspin::wood_rest, registered on the
    dispatcher directly): where w requires a gradient it runs as a graph break instead, so the
    gradient through the accepted attempts' w flows as in the eager draw (through the operator
    it would be dropped without a word, the spins the same).
    """
    count = 300
    generator = torch.Generator().manual_seed(dimension)
    theta = 2.0 * torch.randn(2, count, dimension, dtype=torch.float64, generator=generator)
    temperature = torch.ones(2, count, dtype=torch.float64)
    weights = torch.randn(2, count, dimension, dtype=torch.float64, generator=generator)
    draws = round_draws(torch.tensor([3, 4]), 7, count)
    gradients = []
    for draw in (sample_von_mises_fisher, torch.compile(sample_von_mises_fisher, dynamic=False)):
        field = theta.clone().requires_grad_(True)
        (draw(field, temperature, 1.5, draws) * weights).sum().backward()
        gradients.append(field.grad)
    assert close(gradients[0], gradients[1], 1e-9), (gradients[0] - gradients[1]).abs().max()


def explain_round(run):
    """torch._dynamo.explain of one compiled round of ``run``."""
    tag = torch.tensor(round_tag(run.state.round))
    with torch.no_grad():
        return torch._dynamo.explain(play_tagged)(run.state, run.economy, tag)


@needs_compiler
@pytest.mark.slow
def test_the_compiled_uniform_round_is_one_graph():
    """The O(N) round, its hashes and the keying of its agents traced whole: no eager island, no graph break."""
    explained = explain_round(rollout(boltzmann_scenario(100)))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("case", ["expected, tap, two heads, visibility", "expected, dense network"])
def test_the_compiled_expected_round_is_one_graph(case, blocks_way):
    """The fused blocks traced, or one node (econspin::expected_blocks), the inverse temperatures traced: no break."""
    explained = explain_round(rollout(scenario(**SLOW_CASES[case])))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@needs_compiler
@pytest.mark.slow
def test_the_compiled_sampled_round_is_one_graph(blocks_way):
    """The sampled blocks traced or one node (econspin::sampled_blocks), Wood's loop one (::wood_rest): no break."""
    explained = explain_round(rollout(scenario(**SLOW_CASES["sampled, vmf, two heads"])))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@needs_compiler
@pytest.mark.slow
def test_resume_under_compile_is_bit_identical(tmp_path):
    """Ten compiled rounds straight, and four, a checkpoint, a fresh rollout loading it and six more: the same bits."""
    base = scenario(mode="sampled", run={"compile": "default", "seed": 5})
    straight = rollout([base, base], replicas=[0, 1])
    straight.advance(10)
    first = rollout([base, base], replicas=[0, 1])
    first.advance(4)
    save_checkpoint(tmp_path / "checkpoint.pt", first.state, first.replicas, 10, {"kind": "test"}, {})
    resumed = rollout([base, base], replicas=[0, 1])
    resumed.state, _ = load_checkpoint(tmp_path / "checkpoint.pt", resumed.state)
    resumed.advance(6)
    for name in FIELDS:
        assert torch.equal(getattr(straight.state, name), getattr(resumed.state, name)), name
    assert straight.metrics().tail(12).reset_index(drop=True).equals(resumed.metrics().reset_index(drop=True))


runner = CliRunner()


@pytest.mark.parametrize(
    "arguments",
    [["--set", "run.compile=fast"], ["--compile", "yes"]],
    ids=["--set run.compile", "--compile"],
)
def test_bad_compile_values_are_refused_in_one_line(tmp_path, arguments):
    path = tmp_path / "scenario.yaml"
    path.write_text(TINY)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet", *arguments])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "run.compile" in result.output, result.output
    assert not out.exists()


def test_bench_refuses_a_bad_compile_value_in_one_line():
    result = runner.invoke(app, ["bench", "--quick", "--compile", "sometimes"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--compile" in result.output


def test_without_a_compiler_the_setting_fails_with_one_line(tmp_path, monkeypatch):
    """No C++ compiler: building the economy raises one ScenarioError naming run.compile; the CLI exits 2."""
    from torch._inductor import cpp_builder

    def no_compiler():
        raise RuntimeError("no working C++ compiler found in ('g++',)")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ScenarioError, match="run.compile: default: torch.compile needs a C\\+\\+ compiler"):
        rollout(scenario(run={"compile": "default"}))
    rollout(scenario(run={"compile": "off"}))  # eager needs none
    path = tmp_path / "scenario.yaml"
    path.write_text(TINY)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--compile", "default"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "C++ compiler" in result.output and not (tmp_path / "out").exists()


@needs_compiler
@pytest.mark.slow
def test_bench_times_the_compiled_round_beside_the_eager_one():
    """The bench with --compile: a compiled column in the row, its compile time, and its agreement with eager."""
    from econspin.bench import bench_table, run_bench

    result = run_bench(sizes=(64,), batches=(2,), repeats=1, compile_mode="default", baselines=("boltzmann",))
    row = result["rows"][0]
    assert result["compile"] == "default" and row["compiled_ms"] > 0 and row["compile_s"] > 0
    assert row["compiled_ratio"] == pytest.approx(row["compiled_ms"] / row["floor_ms"])
    assert row["compiled_difference"] < 1e-5  # float32 states and money after one round
    assert "compiled ms" in [column.header for column in bench_table(result).columns]
    boltzmann = result["boltzmann"][0]
    assert "skipped" in boltzmann or boltzmann["compiled_ratio"] == pytest.approx(
        boltzmann["mesa_ms"] / boltzmann["compiled_ms"]
    )


def block_calls(state, economy, rows, compiled_inversion=False):
    """(eager terms, what the eager blocks return, the operator's results, the operator and its arguments).

    ``compiled_inversion``: the sampled operator counts the running sums with its compiled function.
    """
    eager, operated = round_terms(state, economy), round_terms(state, economy)
    generator = torch.Generator().manual_seed(rows)
    if economy.mode == "expected":
        moment_rows = torch.rand(eager.groups, 2, eager.left.shape[1], generator=generator, dtype=torch.float64)
        extra = (moment_rows.to(eager.delivered.dtype),)
        want, operator = expected_blocks(eager, economy, *extra, rows), torch.ops.econspin.expected_blocks.default
    else:
        # float64 whatever the working precision, as a round draws them (fused_sampled.sampled_choices)
        uniforms = torch.rand(eager.groups, eager.left.shape[1], generator=generator, dtype=torch.float64)
        extra = (uniforms, compiled_inversion)
        want, operator = (sampled_blocks(eager, economy, extra[0], rows),), torch.ops.econspin.sampled_blocks.default
    arguments = (*block_arguments(operated, economy, rows), *extra)
    return eager, want, operator(*arguments), operator, arguments


@given(st.sampled_from(["expected", "sampled"]).flatmap(economies), st.integers(1, 12))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_the_block_operators_are_the_eager_blocks(drawn, rows):
    """econspin::expected_blocks and ::sampled_blocks, what a compiled round calls, give the eager blocks' bits."""
    state, economy = drawn
    with torch.no_grad():
        eager, want, got, _, _ = block_calls(state, economy, rows)
    for name, kept, result in zip(("m", "s", "sum e y"), (eager.shifted_max, eager.total, eager.dot), got):
        assert torch.equal(kept, result), name
    for wanted, result in zip(want, got[3:], strict=True):
        assert torch.equal(wanted, result)


@needs_compiler
@given(economies(mode="sampled"), st.integers(1, 12))
@settings(max_examples=10, deadline=None, derandomize=True)
def test_the_sampled_operator_with_its_compiled_count_draws_the_eager_sellers(drawn, rows):
    """econspin::sampled_blocks counting with its compiled function, on blocks of every size: the eager blocks' draws.

    m_i bit for bit; s_i and sum e y, which the compiled call sums itself, to rounding.
    """
    state, economy = drawn
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused_sampled, "COMPILED_COUNT_FROM", 0)
        eager, want, got, _, _ = block_calls(state, economy, rows, compiled_inversion=True)
    tolerance = 1e-12 if eager.dot.dtype == torch.float64 else 1e-5
    assert torch.equal(eager.shifted_max, got[0])
    assert close(eager.total, got[1], tolerance) and close(eager.dot, got[2], tolerance)
    assert torch.equal(want[0], got[3])


def _cosine_sums(x: torch.Tensor, keep: bool):
    """The sums over both axes of 3 cos x, with 3 cos x stored (compiled.stored) or left to Inductor."""
    tripled = torch.cos(x) * 3.0
    tripled = stored(tripled) if keep else tripled
    return tripled.sum(0), tripled.sum(1)


@needs_compiler
def test_a_stored_tensor_is_computed_once_in_the_compiled_code():
    """compiled.stored: Inductor keeps the tensor instead of recomputing it in each loop that reads it.

    Read by two reductions over different axes, 3 cos x is computed inside each of them unless
    stored: one cos in the generated code instead of two, and the same sums. Eagerly the
    tensor itself.
    """
    x = torch.randn(64, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert stored(x) is x
    cosines = {}
    for keep in (False, True):
        torch._dynamo.reset()
        sums, code = run_and_get_code(torch.compile(functools.partial(_cosine_sums, keep=keep), dynamic=False), x)
        cosines[keep] = sum(source.count(".cos()") + source.count("std::cos(") for source in code)
        for want, got in zip(_cosine_sums(x, keep), sums, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    assert cosines == {False: 2, True: 1}


def test_stored_where_measured_stores_a_tensor_on_the_switchs_devices_only(monkeypatch):
    """compiled.stored_where_measured: stored (a view Inductor must write) on STORED_DEVICES, compiling; else itself.

    Eagerly every tensor is itself; while compiling, a CPU tensor becomes stored's view and a
    tensor elsewhere (here on the meta device, standing for a GPU's) stays itself, until the
    switch names its device (as gpu_check's way does for CUDA).
    """
    from econspin import compiled

    cpu, elsewhere = torch.zeros(4, 3), torch.zeros(4, 3, device="meta")
    assert stored_where_measured(cpu) is cpu and stored_where_measured(elsewhere) is elsewhere
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    viewed = stored_where_measured(cpu)
    assert viewed is not cpu and viewed.data_ptr() == cpu.data_ptr() and viewed.stride() == cpu.stride()
    assert stored_where_measured(elsewhere) is elsewhere
    monkeypatch.setattr(compiled, "STORED_DEVICES", ("cpu", "meta"))
    assert stored_where_measured(elsewhere) is not elsewhere
    monkeypatch.setattr(compiled, "STORED_DEVICES", ())
    assert stored_where_measured(cpu) is cpu


def _unit_field(theta: torch.Tensor):
    """|theta| and theta_hat laid out (d, ...) as the compiled draw makes them."""
    return _norm_and_unit(theta, True, torch.float64)


@needs_compiler
def test_the_compiled_draws_field_is_stored_in_rows_padded_where_they_would_conflict_in_the_cache():
    """compiled.stored_in_padded_rows: rows a multiple of 1 KiB long get a cache line more, with the same values.

    The compiled draw lays the field out (d, ...), a row of B N agents per component: 2 x 128
    float32 agents make rows of 1 KiB, stored as 256 + 16 floats; |theta| and theta_hat are the
    eager ones to float32 rounding, with a row of zeros (theta_hat 0) among them.
    """
    widths = {(256, 4): 272, (128, 8): 136, (8192, 4): 8208, (300, 4): 300, (64, 4): 64}  # (width, bytes): padded
    assert {key: padded_width(*key) for key in widths} == widths
    theta = torch.randn(2, 128, 5, generator=torch.Generator().manual_seed(3))
    theta[1, 7] = 0.0
    norm, unit = _norm_and_unit(theta, False, torch.float64)
    (got_norm, got_unit), code = run_and_get_code(torch.compile(_unit_field, dynamic=False), theta)
    assert got_unit.shape == (5, 2, 128) and got_unit[:, 1, 7].eq(0).all()
    torch.testing.assert_close(got_norm, norm, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_unit.movedim(0, -1), unit, rtol=0, atol=1e-6)
    assert any("(5, 272)" in source for source in code), code


def _joined_rows(*pieces: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Of the pieces joined by rows: each row's first entry doubled, its largest entry, and its sum."""
    joined = rows_together(list(pieces))
    return joined[..., 0] * 2.0, joined.amax(-1), joined.sum(-1)


@needs_compiler
def test_rows_joined_under_compile_are_torch_cat_and_never_written_out():
    """projections.rows_together: compiled, the values of torch.cat, with no buffer of the joined rows.

    The populations' projections are joined this way so that Inductor reads each population's
    product where the round reads the rows, instead of copying them into a concatenation
    first. Rows are chosen, never added: -0 and NaN come through as they were.
    """
    generator = torch.Generator().manual_seed(1)
    pieces = [torch.randn(3, rows, 6, dtype=torch.float64, generator=generator) for rows in (5, 2, 4)]
    pieces[1][0, 0, 0], pieces[1][0, 1, 1] = -0.0, float("nan")
    eagerly = rows_together(pieces)
    assert torch.equal(eagerly.nan_to_num(7.0), torch.cat(pieces, dim=1).nan_to_num(7.0))
    got, code = run_and_get_code(torch.compile(_joined_rows, dynamic=False), *pieces)
    want = _joined_rows(*pieces)
    for exact in range(2):  # a copy and a maximum: the same bits
        assert torch.equal(got[exact].nan_to_num(7.0), want[exact].nan_to_num(7.0))
        assert torch.equal(got[exact].signbit(), want[exact].signbit())
    torch.testing.assert_close(got[2], want[2], rtol=1e-14, atol=1e-14, equal_nan=True)
    # the joined (3, 11, 6) rows are read in the loops that use them, never allocated
    assert not any("(3, 11, 6)" in line for source in code for line in source.splitlines() if "empty_strided" in line)


@pytest.mark.parametrize("mode", ["expected", "sampled"])
@pytest.mark.parametrize("network, dtype", [(False, "float64"), (True, "float64"), (False, "float32")])
def test_the_block_operators_are_well_formed(mode, network, dtype, monkeypatch):
    """torch.library.opcheck: schema, fake tensors (the shapes a compiled graph plans for), no aliasing.

    The sampled operator with its compiled count of the running sums where a compiler is at hand
    (as a compiled round calls it; here on blocks of any size). In float32 too, where the sampled
    operator's uniforms are float64 and its per-row results float32: the fake results must say so.
    """
    monkeypatch.setattr(fused_sampled, "COMPILED_COUNT_FROM", 0)
    options = {"network": {"generator": "gnp_random_graph", "params": {"p": 0.5}}} if network else {}
    run = rollout(scenario(mode=mode, heads=2, **options), dtype=dtype)
    with torch.no_grad():
        *_, operator, arguments = block_calls(run.state, run.economy, 5, compiled_inversion=MISSING_COMPILER is None)
    torch.library.opcheck(operator, arguments)


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("case", ["expected, tap, two heads, visibility", "sampled, vmf, two heads"])
def test_the_blocks_as_a_graph_break_equal_the_eager_round(case, monkeypatch):
    """CUDA's route until a GPU has measured the operators (compiled.OPERATOR_DEVICES): the blocks between graphs."""
    monkeypatch.setattr("econspin.compiled.OPERATOR_DEVICES", ())
    monkeypatch.setattr("econspin.traced_blocks.TRACED_DEVICES", ())  # (traced, the blocks are no call of their own)
    run = rollout(scenario(**SLOW_CASES[case]))
    explained = explain_round(run)
    # where each break sits (the last frame), not only a reason naming a function "...eagerly":
    # Wood's loop (_wood_rest_eagerly) would match that alone in sampled mode
    breaks = {reason.user_stack[-1].name for reason in explained.break_reasons if reason.user_stack}
    assert breaks & {"expected_blocks", "sampled_blocks"}, explained.break_reasons
    if "sampled" in case:  # Wood's loop takes the same switch
        assert "_wood_rest_compiled" in breaks, explained.break_reasons
    torch._dynamo.reset()
    compare_rounds(run, rounds=3)
