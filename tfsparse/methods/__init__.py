"""Pruning and sparse-training methods: Keras callbacks, and
`DirectedEvolution`, which sparsifies a model after its training."""

from tfsparse.methods.base import BudgetWarning, PruningMethod
from tfsparse.methods.channel import ChannelPruning
from tfsparse.methods.asni import ASNI, AmenableInit, amenable_initialization, amenable_model
from tfsparse.methods.dst import DSTEE, SET, DynamicSparseTraining, RigL
from tfsparse.methods.evolution import DirectedEvolution
from tfsparse.methods.frozen import ASLP, EdgePopup, Supermask
from tfsparse.methods.magnitude import MagnitudePruning
from tfsparse.methods.optg import OptG
