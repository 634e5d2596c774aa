"""Filters, routes and transforms of events, configured under ``transforms:`` and run by the workers.

A source's worker applies the chain after ``poll`` and before it publishes; a sink's after an event
arrives and before ``put``. :mod:`.steps` says what each step does, :mod:`.cel` and :mod:`.jq` hold
the expression languages, :mod:`.chain` compiles and applies the steps; :mod:`.eventmesh` reads
Apache EventMesh's filter patterns and transformers, so rules written for EventMesh keep working.
"""

from runtime.transforms.chain import TransformChain, compile_transforms
from runtime.transforms.steps import Routing
from runtime.transforms.view import EventView

__all__ = ["EventView", "Routing", "TransformChain", "compile_transforms"]
