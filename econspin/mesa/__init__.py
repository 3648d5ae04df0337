"""Mesa rims around the engine: the econspin model for Mesa, and the per-agent reference model.

Needs Mesa 3 (``pip install econspin[mesa]``); the engine itself never imports Mesa.
"""

from econspin.mesa.model import EconSpinAgent, EconSpinModel
from econspin.mesa.reference import ReferenceAgent, ReferenceModel

__all__ = ["EconSpinAgent", "EconSpinModel", "ReferenceAgent", "ReferenceModel"]
