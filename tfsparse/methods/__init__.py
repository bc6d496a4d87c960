"""Pruning and sparse-training methods, each a Keras callback.

`registered()` maps the command-line names to the classes.
"""

from tfsparse.methods.base import PruningMethod, get, registered
from tfsparse.methods.channel import ChannelPruning
from tfsparse.methods.asni import ASNI, AmenableInit, amenable_initialization, amenable_model
from tfsparse.methods.dst import DSTEE, SET, DynamicSparseTraining, RigL
from tfsparse.methods.evolution import DirectedEvolution, DirectedEvolutionRun, magnitude_baseline
from tfsparse.methods.frozen import ASLP, EdgePopup, Supermask
from tfsparse.methods.magnitude import MagnitudePruning
from tfsparse.methods.optg import OptG
