"""Test setup: the helpers module on the path, one torch thread per worker."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# pytest-xdist runs two workers on two cores: one thread each avoids oversubscription,
# which on a loaded machine makes small tensor work ten times slower
torch.set_num_threads(1)
