"""Loading models and describing where their decoder blocks live."""
from prunescope.models.architectures import Architecture, get_architecture, get_layers, num_layers, supported_model_types
from prunescope.models.loading import DEFAULT_MODEL, load_model

__all__ = ["Architecture", "DEFAULT_MODEL", "get_architecture", "get_layers", "load_model", "num_layers",
           "supported_model_types"]
