"""tfsparse: pruning and sparse training for Keras 3."""

from tfsparse import (
    allocation, callbacks, export, layers, mask_functions, masking, methods, quantization, schedules,
)
from tfsparse.channel_graph import channel_groups
from tfsparse.gradients import dense_gradients
from tfsparse.masking import prune_once
from tfsparse.quantization import quantize_aware
from tfsparse.shrink import shrink
from tfsparse.stats import sparsity, summary
from tfsparse.surgery import PruningCoverageWarning, coverage, masked_weights, prune, strip

__version__ = "0.1.0"
