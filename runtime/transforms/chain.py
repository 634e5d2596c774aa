"""The chain of a connector's ``transforms:`` steps, compiled once at start and applied to each record in order.

A step that drops the record ends the chain for it (the worker commits or acknowledges it as done);
a step that fails on it raises :class:`~runtime.errors.DataError` naming the step (the worker
dead-letters the record with that reason and goes on). Each step counts the events it saw, dropped
and failed on in plain integers; :meth:`TransformChain.flush_metrics` adds them to the Prometheus
counters, once per batch, so the per-event path takes no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from runtime.errors import ConfigError, DataError
from runtime.record import ConnectorRecord
from runtime.transforms.spec import StepSpec
from runtime.transforms.steps import Routing, Step, build_step
from runtime.transforms.view import EventView
from runtime.validation import validate_model

__all__ = ["StepCounter", "TransformChain", "compile_transforms"]


class StepCounter(Protocol):
    """A Prometheus counter of one step, as :meth:`ConnectorMetrics.transform_step` hands it out."""

    def inc(self, amount: float = 1) -> None: ...


StepCounters = Callable[[str], tuple[StepCounter, StepCounter, StepCounter]]
"""The counters (events in, dropped, failed) of the step labelled by the argument."""


class TransformChain:
    """Compiled steps, applied in order (see the module docstring)."""

    def __init__(self, steps: Sequence[tuple[str, Step]], counters: StepCounters | None = None) -> None:
        self.labels = tuple(label for label, _ in steps)
        self._steps = tuple(step for _, step in steps)
        self._seen = [0] * len(steps)
        self._dropped = [0] * len(steps)
        self._failed = [0] * len(steps)
        self._counters = [counters(label) for label in self.labels] if counters is not None else None

    def apply(self, record: ConnectorRecord) -> ConnectorRecord | None:
        """The record after every step; None when a step dropped it; DataError naming the step that failed."""
        seen = self._seen
        for index, step in enumerate(self._steps):
            seen[index] += 1
            try:
                result = step(record)
            except DataError as exc:
                self._failed[index] += 1
                raise DataError(f"transform step {self.labels[index]} failed: {exc.reason}") from None
            if result is None:
                self._dropped[index] += 1
                return None
            record = result
        return record

    def flush_metrics(self) -> None:
        """Add the counts since the last flush to the step counters."""
        if self._counters is None:
            return
        for index, (seen, dropped, failed) in enumerate(self._counters):
            for counter, counts in ((seen, self._seen), (dropped, self._dropped), (failed, self._failed)):
                if counts[index]:
                    counter.inc(counts[index])
                    counts[index] = 0


def compile_transforms(
    steps: Sequence[Any], *, view: EventView, routing: Routing, counters: StepCounters | None = None
) -> TransformChain | None:
    """The chain of the ``transforms:`` config ``steps`` (None when there are none); ConfigError naming the
    step (``transforms.<index>``, and its name) when one cannot be compiled."""
    if not steps:
        return None
    compiled: list[tuple[str, Step]] = []
    for index, raw in enumerate(steps):
        spec = validate_model(StepSpec, raw, prefix=f"transforms.{index}")
        label = f"{index} {spec.name!r} ({spec.kind})" if spec.name else f"{index} ({spec.kind})"
        try:
            step = build_step(spec, f"transforms.{index}.{spec.kind}", view, routing)
        except ConfigError as exc:
            if spec.name is None:
                raise
            raise ConfigError(f"{exc.key} (step {spec.name!r})", exc.problem, exc.fix) from None
        compiled.append((label, step))
    return TransformChain(compiled, counters)
