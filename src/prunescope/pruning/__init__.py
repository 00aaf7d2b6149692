"""Selecting and cutting decoder blocks, and saving the result."""
from prunescope.pruning.save import save_pruned
from prunescope.pruning.selection import count_for_ratio, layers_from_order, parse_layer_list
from prunescope.pruning.surgery import drop_layers, skip_layers, validate_layers

prune_layers = drop_layers  # the stage function named in the design: prune_layers(model, *, layers)

__all__ = ["count_for_ratio", "drop_layers", "layers_from_order", "parse_layer_list", "prune_layers", "save_pruned",
           "skip_layers", "validate_layers"]
