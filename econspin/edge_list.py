"""Edge-list files: one trade link a line, every problem reported with its line number.

A line is ``i j``: agent i and agent j, integers 0..N-1 (agents numbered across populations in
scenario order). A third field is the edge's weight, a plain number (``i j 2.5``) or networkx's
data dictionary (``i j {'weight': 2.5}``, as ``networkx.write_edgelist`` writes it). Blank lines
and everything after ``#`` are skipped. A weight must be a finite number > 0: the market trades
along every edge of the file whatever its weight (MODEL.md's trade network is a graph, not a
weighting), and the weight is kept on the networkx graph (edge attribute ``weight``) that Mesa
and networkx code see.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import torch

from econspin.scenario import ScenarioError

KEY = "market.network.edge_list"


def read_edge_list(path: str | Path, agent_count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(E, 2) long pairs, and (E,) float64 weights (1 where a line gives none) or None if no line gives one."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(f"{KEY}: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    pairs, weights, weighted = [], [], False
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split(maxsplit=2)
        if not fields:
            continue
        where = f"{KEY}: {path} line {number}"
        if len(fields) < 2:
            raise ScenarioError(f"{where}: a line is 'i j' or 'i j weight', got 1 field ({line.strip()!r})")
        pairs.append([_agent(field, agent_count, where) for field in fields[:2]])
        weights.append(_weight(fields[2], where) if len(fields) == 3 else 1.0)
        weighted = weighted or len(fields) == 3
    pairs_tensor = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return pairs_tensor, torch.tensor(weights, dtype=torch.float64) if weighted else None


def _agent(field: str, agent_count: int, where: str) -> int:
    try:
        agent = int(field)
    except ValueError:
        raise ScenarioError(f"{where}: {field!r} is not an agent index (a whole number 0..{agent_count - 1})") from None
    if not 0 <= agent < agent_count:
        raise ScenarioError(f"{where}: agent {agent} does not exist; the populations hold agents 0..{agent_count - 1}")
    return agent


def _weight(field: str, where: str) -> float:
    """A third field: a number, or a networkx data dictionary whose only key read is ``weight``."""
    text = field.strip()
    if text.startswith("{"):
        try:
            data = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            data = None
        if not isinstance(data, dict):
            raise ScenarioError(f"{where}: {text!r} is not a data dictionary such as {{'weight': 2.5}}")
        unknown = sorted(str(key) for key in data if key != "weight")
        if unknown:
            raise ScenarioError(f"{where}: edge data {unknown[0]!r} is not read; only 'weight' is")
        value = data.get("weight", 1.0)
    elif len(text.split()) > 1:
        raise ScenarioError(f"{where}: a line is 'i j' or 'i j weight', got {2 + len(text.split())} fields")
    else:
        try:
            value = float(text)
        except ValueError:
            raise ScenarioError(f"{where}: weight {text!r} is not a number (a line is 'i j' or 'i j weight')") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ScenarioError(f"{where}: weight {value!r} should be a finite number > 0")
    return float(value)
