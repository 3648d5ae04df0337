"""The dashboard: a Mesa SolaraViz page over :class:`~econspin.mesa.EconSpinModel`.

``econspin viz SCENARIO`` serves it (see :mod:`econspin.mesa.serve`); in a notebook,
``dashboard(Scenario.from_yaml(path))`` displays the same page. It shows

- in the sidebar, SolaraViz's own controls (reset, play/pause, step, play and render
  intervals) and the model's parameters: a slider per population for its temperature (when
  it is one number) and, for buyers, its spend, and a text field for the seed (a seed typed
  into the page arrives as text, which EconSpinModel reads as an integer);
- the concentration metrics hhi, cr4, gini and attention_entropy over the rounds played;
- the wealth distribution of each population, now;
- the trade network of the last round: its ``top_k`` largest money flows
  (:func:`econspin.flows.trade_network`), drawn with networkx, one ring per population.

Moving a slider or typing a seed takes effect at the next reset, as in every SolaraViz page.
Needs the ``viz`` extra (``pip install 'econspin[viz]'``).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import matplotlib
import networkx as nx
import numpy as np
import solara
from matplotlib.figure import Figure

with warnings.catch_warnings():
    # Mesa 3.3's ComponentsView calls a hook after an early return, which solara reports at import
    warnings.filterwarnings("ignore", message=r".*ComponentsView: `use_state` found despite early return")
    from mesa.visualization import SolaraViz
    from mesa.visualization.utils import update_counter

from econspin.flows import MAX_DENSE_AGENTS, trade_network
from econspin.mesa.model import EconSpinModel
from econspin.scenario import Scenario

SCENARIO_VARIABLE = "ECONSPIN_VIZ_SCENARIO"
"""The environment variable through which ``econspin viz`` names the scenario file to the page."""

METRICS = ("hhi", "cr4", "gini", "attention_entropy")
TOP_FLOWS = 40
FIGURE_SIZE = (6.0, 4.2)
COLOURS = matplotlib.colormaps["tab10"].colors


def model_parameters(scenario: Scenario) -> dict:
    """SolaraViz's model_params: the scenario (fixed), a seed field, a slider per population setting.

    A population gets a temperature slider when its temperature is one finite number (not a
    schedule or a distribution), and a spend slider when it buys under the share rule.
    """
    parameters: dict = {
        "scenario": scenario,
        "seed": {"type": "InputText", "value": str(scenario.run.seed), "label": "seed"},
    }
    for name, population in scenario.populations.items():
        if isinstance(population.temperature, (int, float)) and math.isfinite(population.temperature):
            temperature = float(population.temperature)
            parameters[f"{name}_temperature"] = {
                "type": "SliderFloat",
                "label": f"{name} temperature",
                "value": temperature,
                "min": 0.0,
                "max": max(2.0, 2 * temperature),
                "step": 0.01,
            }
        if population.buys and scenario.market.spend_rule == "share":  # a unit rule spends no share
            parameters[f"{name}_spend"] = {
                "type": "SliderFloat",
                "label": f"{name} spend",
                "value": float(population.spend),
                "min": 0.01,
                "max": 1.0,
                "step": 0.01,
            }
    return parameters


def metrics_figure(model: EconSpinModel) -> Figure:
    """hhi, cr4, gini and attention_entropy against the round, one panel each."""
    table = model.datacollector.get_model_vars_dataframe()
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    sellers = sum(p.count for p in model.scenario.populations.values() if p.sells)
    for axis, name in zip(axes.flat, METRICS):
        axis.plot(np.arange(len(table)), table[name].to_numpy(), color="C0")
        if name == "hhi" and sellers:
            axis.axhline(1 / sellers, color="grey", linestyle=":", linewidth=1, label="1/S (competition)")
            axis.legend(loc="best", fontsize=7, frameon=False)
        axis.set_title(f"{name}  {table[name].iloc[-1]:.3g}", fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("round", fontsize=8)
    figure.suptitle(f"{model.scenario.name}: round {model.steps}", fontsize=10)
    return figure


def wealth_figure(model: EconSpinModel) -> Figure:
    """A histogram of money by population (log-spaced bins), each population's share in the legend."""
    money = model.rollout.state.money[0].double().cpu().numpy()
    population = model.rollout.economy.population.cpu().numpy()
    names = model.rollout.economy.population_names
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axis = figure.subplots()
    positive = money[money > 0]
    low, high = (positive.min(), positive.max()) if len(positive) else (1.0, 1.0)
    if high <= low * 1.01:
        low, high = low / 1.1, high * 1.1
    bins = np.geomspace(low, high, 40)
    total = money.sum()
    for index, name in enumerate(names):
        values = money[population == index]
        share = values.sum() / total if total > 0 else 0.0
        axis.hist(
            values,
            bins=bins,
            alpha=0.6,
            color=COLOURS[index % len(COLOURS)],
            label=f"{name} ({len(values)}): {share:.0%} of money",
        )
    axis.set_xscale("log")
    axis.set_xlabel("money w_i", fontsize=8)
    axis.set_ylabel("agents", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7, frameon=False)
    axis.set_title(f"wealth by population, round {model.steps}", fontsize=10)
    return figure


def network_figure(model: EconSpinModel, top_k: int = TOP_FLOWS) -> Figure:
    """The last round's ``top_k`` largest flows, buyer -> seller: a ring per population.

    Node size grows with the seller's revenue in that round, edge width with the flow.
    """
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axis = figure.subplots()
    axis.set_axis_off()
    agents = model.rollout.economy.agent_count
    if agents > MAX_DENSE_AGENTS:
        axis.text(
            0.5,
            0.5,
            f"trade network: drawn up to {MAX_DENSE_AGENTS} agents ({agents} here)",
            ha="center",
            va="center",
            fontsize=9,
        )
        return figure
    if model.rollout.previous is None:
        axis.text(0.5, 0.5, "trade network: no trade yet, press Step", ha="center", va="center", fontsize=10)
        axis.set_title("trade network, round 0", fontsize=10)
        return figure
    graph = trade_network(model, top_k=top_k)
    shown = graph.subgraph([node for node in graph if graph.degree(node) > 0])
    names = model.rollout.economy.population_names
    rings = [[node for node in shown if shown.nodes[node]["population"] == name] for name in names]
    rings = [ring for ring in rings if ring]
    position = nx.shell_layout(shown, nlist=rings) if rings else {}
    colour = {name: COLOURS[index % len(COLOURS)] for index, name in enumerate(names)}
    revenue = np.array([shown.nodes[node]["revenue"] for node in shown])
    sizes = 20 + 280 * revenue / revenue.max() if len(revenue) and revenue.max() > 0 else 40
    weights = np.array([weight for _, _, weight in shown.edges(data="weight")])
    widths = 0.5 + 3.5 * weights / weights.max() if len(weights) else 1.0
    nx.draw_networkx_edges(
        shown, position, ax=axis, width=widths, edge_color="0.45", alpha=0.7, arrows=True, arrowsize=7, node_size=sizes
    )
    nx.draw_networkx_nodes(
        shown,
        position,
        ax=axis,
        node_size=sizes,
        node_color=[colour[shown.nodes[node]["population"]] for node in shown],
    )
    kept = float(weights.sum()) if len(weights) else 0.0
    total = graph.graph["total_flow"]
    for name in names:
        axis.scatter([], [], color=colour[name], label=name)
    axis.legend(fontsize=7, frameon=False, loc="upper right")
    share = ("<0.1%" if kept / total < 0.001 else f"{kept / total:.1%}") if total > 0 else "none"
    axis.set_title(
        f"trade network, round {graph.graph['round']}: the {graph.number_of_edges()} largest flows "
        f"({share} of {_money(total)} spent)",
        fontsize=9,
    )
    return figure


def _money(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def _figure(build, model: EconSpinModel):
    """``build(model)`` as a PNG, redrawn after every step or reset (not when a slider moves)."""
    update_counter.get()  # SolaraViz bumps it after every step: re-render
    figure = solara.use_memo(lambda: build(model), dependencies=[model, model.steps])
    return solara.FigureMatplotlib(figure, format="png", dependencies=[model, model.steps])


@solara.component
def MetricsPlot(model: EconSpinModel):
    """hhi, cr4, gini and attention_entropy over the rounds played."""
    return _figure(metrics_figure, model)


@solara.component
def WealthHistogram(model: EconSpinModel):
    """Money by population, now."""
    return _figure(wealth_figure, model)


@solara.component
def TradeNetworkPlot(model: EconSpinModel):
    """The last round's largest flows."""
    return _figure(network_figure, model)


COMPONENTS = [(MetricsPlot, 0), (WealthHistogram, 0), (TradeNetworkPlot, 0)]


def dashboard(scenario: Scenario | str | Path, model: EconSpinModel | solara.Reactive | None = None):
    """The SolaraViz page of a scenario (an element: display it, or return it from a component).

    ``model`` is the first model shown (by default the scenario's, at its own seed), or a
    ``solara.Reactive`` holding it (whose value then follows every reset); reset builds a new
    one from the sidebar's values.
    """
    if not isinstance(scenario, Scenario):
        scenario = Scenario.from_yaml(scenario)
    if model is None:
        model = EconSpinModel(scenario, seed=scenario.run.seed)
    return SolaraViz(
        model,
        components=COMPONENTS,
        model_params=model_parameters(scenario),
        name=f"econspin: {scenario.name}",
    )


@solara.component
def Page():
    """The page ``econspin viz`` serves: the scenario named by $ECONSPIN_VIZ_SCENARIO, one model per visitor."""
    path = os.environ.get(SCENARIO_VARIABLE)
    if not path:
        raise RuntimeError(f"no scenario: start the page with `econspin viz SCENARIO` (or set ${SCENARIO_VARIABLE})")
    scenario = solara.use_memo(lambda: Scenario.from_yaml(path), dependencies=[path])
    model = solara.use_memo(lambda: EconSpinModel(scenario, seed=scenario.run.seed), dependencies=[scenario])
    return dashboard(scenario, model)


__all__ = [
    "COMPONENTS",
    "Page",
    "SCENARIO_VARIABLE",
    "dashboard",
    "model_parameters",
    "metrics_figure",
    "network_figure",
    "wealth_figure",
]
