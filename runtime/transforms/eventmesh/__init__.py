"""Apache EventMesh's event filter patterns and transformers, for rules carried over from EventMesh.

Both work on an event given as a structured-mode CloudEvent mapping: its attributes, its extensions and
``data`` (already parsed when it is JSON).

:mod:`.filter` reads the filter patterns, :mod:`.transformer` the transformers, and :mod:`.values` holds
how EventMesh sees a value (its text of a number, a timestamp, a missing field), which both share.
"""

from runtime.transforms.eventmesh.filter import EventFilter, compile_eventmesh_filter
from runtime.transforms.eventmesh.transformer import EventTransformer, compile_eventmesh_transformer

__all__ = ["EventFilter", "EventTransformer", "compile_eventmesh_filter", "compile_eventmesh_transformer"]
