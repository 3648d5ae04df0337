"""Mesa rims around the engine: the econspin model, the per-agent reference, the tutorial's model.

EconSpinModel plays the engine's rounds under Mesa; ReferenceModel plays them one agent at a
time with numpy; MoneyModel is Mesa's own Boltzmann wealth model (the baseline of the
engine's O(N) path).

Needs Mesa 3 (``pip install econspin[mesa]``); the engine itself never imports Mesa.
"""

from econspin.mesa.boltzmann import MoneyAgent, MoneyModel
from econspin.mesa.model import EconSpinAgent, EconSpinModel
from econspin.mesa.reference import ReferenceAgent, ReferenceModel

__all__ = ["EconSpinAgent", "EconSpinModel", "MoneyAgent", "MoneyModel", "ReferenceAgent", "ReferenceModel"]
