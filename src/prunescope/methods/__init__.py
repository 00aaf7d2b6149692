"""Compression methods: depth pruning, span replacement (LLM-Streamline), layer merging (LaCo), width pruning
(Minitron), weight quantization and self-speculative drafts, behind one registry and one entry point.

``prunescope.compress(model, tok, "merge", ratio=0.25)`` returns a ``Compressed`` (model + record);
``METHODS.names()`` lists the methods; a new one is a function decorated with ``@register_method``.
"""
from prunescope.methods.base import (METHODS, Compressed, compress, parse_settings, register_method,
                                     resolve_settings)
from prunescope.methods import depth, merge, quant, replace, speculative, width  # noqa: F401  (registers)
from prunescope.methods.save import save_compressed
from prunescope.methods.speculative import make_draft

__all__ = ["METHODS", "Compressed", "compress", "make_draft", "parse_settings", "register_method",
           "resolve_settings", "save_compressed"]
