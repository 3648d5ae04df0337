"""Fixed couplings J (``market.couplings``, the kinetic Ising case): made, or read from a scenario's .npz file.

A file numpy cannot read, or an array of the wrong size, is one line naming the file and key
(ScenarioError), never a traceback.
"""

from __future__ import annotations

import zipfile

import numpy as np
import torch

from econspin.scenario import Scenario, ScenarioError


def coupling_matrix(spec, agent_count: int, dtype) -> torch.Tensor:
    """The fixed couplings J a scenario describes: made (curie_weiss) or read from its .npz file."""
    if spec.curie_weiss is not None:
        matrix = torch.full((agent_count, agent_count), spec.curie_weiss / agent_count, dtype=torch.float64)
        matrix.fill_diagonal_(0.0)
        return matrix.to(dtype)
    matrix = _stored_array(spec.file, spec.coupling_key, "coupling_key")
    if matrix.shape != (agent_count, agent_count):
        raise ScenarioError(
            f"market.couplings.file: {spec.coupling_key} has shape {matrix.shape}, "
            f"the populations hold {agent_count} agents"
        )
    return torch.from_numpy(matrix).to(dtype)


def coupling_fields(scenario: Scenario) -> np.ndarray | None:
    """Fields h stored beside the couplings (``field_key``), one per agent, or None."""
    spec = scenario.market.couplings
    if spec is None or spec.file is None or spec.field_key is None:
        return None
    fields = _stored_array(spec.file, spec.field_key, "field_key").reshape(-1)
    if fields.shape != (scenario.agent_count,):
        raise ScenarioError(
            f"market.couplings.field_key: {spec.field_key} in {spec.file} holds {fields.size} values, "
            f"the populations hold {scenario.agent_count} agents"
        )
    return fields


def _stored_array(path: str, name: str, key: str) -> np.ndarray:
    """Array ``name`` of an .npz file as float64; a file numpy cannot read is one line naming it."""
    where = f"market.couplings.file: {path}"
    try:
        with np.load(path, allow_pickle=False) as data:
            if name not in data:
                raise ScenarioError(f"market.couplings.{key}: {path} has no array {name!r} (it has {sorted(data)})")
            return np.asarray(data[name], dtype=np.float64)
    except ScenarioError:
        raise
    except OSError as error:
        raise ScenarioError(f"{where}: cannot read: {error.strerror or error}") from None
    except (ValueError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as error:
        # not an .npz (an .npy's array has no arrays by name), a truncated archive, or arrays of text or objects
        raise ScenarioError(f"{where}: not an .npz of numeric arrays ({type(error).__name__})") from None
