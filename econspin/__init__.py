"""econspin: an agent-based economy in which trade is attention.

The public surface is small: describe an economy with a :class:`Scenario` (from YAML or
Python), run it with :func:`simulate`, and differentiate an observable with respect to one of
its inputs with :func:`susceptibility`. The engine's pieces (``econspin.round.step``,
``econspin.economy.build_economy``, ``econspin.state.initial_state``) are importable for
those who need one round at a time. :func:`keep_freed_memory` tells the C allocator to keep
freed memory for the next round (a process-wide choice, made by the program, never the engine).
"""

from econspin.allocator import keep_freed_memory
from econspin.memory import MemoryBudgetError
from econspin.scenario import Scenario, ScenarioError, ScenarioWarning
from econspin.simulate import SimulationResult, simulate
from econspin.susceptibilities import Susceptibility, susceptibility

__version__ = "0.1.0"

__all__ = [
    "MemoryBudgetError",
    "Scenario",
    "ScenarioError",
    "ScenarioWarning",
    "SimulationResult",
    "Susceptibility",
    "simulate",
    "susceptibility",
    "keep_freed_memory",
    "__version__",
]
