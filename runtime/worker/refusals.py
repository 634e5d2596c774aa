"""What the source worker does with a publish the mesh did not take: retry it, or dead-letter it in ever smaller forms.

A mesh that is away or busy is waited out (backoff with jitter) for as long as it takes. An event
the mesh refuses for what it is (too large, invalid) is never sent again as it was, and one it keeps
refusing for the moment is given up after a few attempts: either goes to the dead-letter topic,
whole, then with its data cut (:class:`~runtime.worker.deadletter.DeadLetterForms`). A record
whose smallest dead letter is refused too is logged, counted and settled all the same, so that the
offsets behind it commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from runtime.client import MeshClient
from runtime.errors import DataError, FrameTooLargeError, MeshRejectedError, RetriableError
from runtime.observability import ConnectorMetrics
from runtime.protocol.events import EncodedEvent, body_to_event, event_to_body
from runtime.worker.deadletter import DeadLetterForms, awaits_subscriber, dead_letter_event, refusal_of, refused_for_size
from runtime.worker.offsets import Submitted
from runtime.worker.retry import Backoff

__all__ = ["RefusedPublishes"]

# A publish the mesh refuses for the moment (a full topic, a rate limit) is tried this often before the
# event is dead-lettered; one it refuses for what it is (size, validation) is dead-lettered at once;
# a mesh that is unreachable is retried for as long as it takes.
_REJECTED_ATTEMPTS = 5


class RefusedPublishes:
    """Publishes ``event`` s again until the mesh takes them (or a dead letter of them); then calls ``done``,
    or ``settled`` for a record skipped because even its smallest dead letter was refused."""

    def __init__(
        self,
        client: MeshClient,
        *,
        metrics: ConnectorMetrics,
        log: Any,
        dead_letter_topic: str,
        connector: str,
        done: Callable[[Submitted, EncodedEvent], None],
        settled: Callable[[Submitted], None],
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.log = log
        self.dead_letter_topic = dead_letter_topic
        self.connector = connector
        self._done = done
        self._settled = settled

    async def republish(self, entry: Submitted, event: EncodedEvent, error: BaseException) -> None:
        """Publish ``event`` again until the mesh takes it. An event the mesh refuses for what it is (never sent
        again as it was) or keeps refusing goes to the dead-letter topic, in ever smaller forms; a record whose
        smallest dead letter is refused too is logged and skipped, so that the offsets behind it commit."""
        backoff = Backoff(0.2, 30.0)
        rejected = 0
        forms: DeadLetterForms | None = None
        while True:
            refusal = refusal_of(error)
            if awaits_subscriber(error):
                self.log.warning("mesh stores nothing on the topic until a group subscribes it: retrying", reason=str(error))
            elif isinstance(error, MeshRejectedError) or refusal is not None:
                rejected += 1
            elif not isinstance(error, RetriableError):
                raise error
            if forms is None and (refusal is not None or rejected >= _REJECTED_ATTEMPTS):
                forms, next_event = self._dead_letter_forms(event, refusal, error, rejected)
            elif forms is not None and refusal is not None:
                next_event = _encoded_smaller(forms, refusal)
            else:
                next_event = event
            if next_event is None:
                self._skip(entry, event, refusal or str(error))
                return
            event = next_event
            self.metrics.retries.inc()
            self.metrics.error("retriable" if isinstance(error, RetriableError) else "rejected")
            await asyncio.sleep(backoff.next_delay(getattr(error, "retry_after", None)))
            try:
                await self.client.publish(event)
            except (MeshRejectedError, RetriableError, FrameTooLargeError) as exc:
                error = exc
                continue
            self._done(entry, event)
            return

    def _dead_letter_forms(
        self, event: EncodedEvent, refusal: str | None, error: BaseException, rejected: int
    ) -> tuple[DeadLetterForms, EncodedEvent | None]:
        """The dead-letter forms of a refused ``event`` and the first one to try (None: no form is left)."""
        refused = body_to_event(event.body)
        if refused.get_subject() == self.dead_letter_topic and refused.get_extension("dlqreason") is not None:
            # Already a dead letter (of a record that could not become an event): only its data can shrink.
            forms = DeadLetterForms(refused)
            return forms, (event if refusal is None else _encoded_smaller(forms, refusal))
        reason = refusal or getattr(error, "desc", None) or str(error)
        self.metrics.dead_letters.inc()
        self.log.warning("mesh refuses an event: dead-lettered", id=refused.get_id(), reason=reason, attempts=rejected)
        forms = DeadLetterForms(
            dead_letter_event(
                refused,
                topic=self.dead_letter_topic,
                reason=f"mesh refused the event: {reason}",
                connector=self.connector,
                attempts=rejected,
            )
        )
        if refusal is not None and refused_for_size(refusal):
            return forms, _encoded_smaller(forms, refusal)  # the whole dead letter carries the same data: cut at once
        try:
            return forms, EncodedEvent(event_to_body(forms.whole))
        except DataError as exc:
            return forms, _encoded_smaller(forms, exc.reason)

    def _skip(self, entry: Submitted, event: EncodedEvent, refusal: str) -> None:
        """The mesh refused every form of the record's dead letter: log what is known of it and go on."""
        self.metrics.dead_letters_dropped.inc()
        self.metrics.error("data")
        attributes = {name: value for name, value in body_to_event(event.body).get_attributes().items() if name != "dlqreason"}
        self.log.error(
            "mesh refused even the smallest dead letter: record skipped",
            reason=refusal,
            partition=dict(entry.record.partition),
            offset=entry.record.offset,
            attributes=attributes,
        )
        self._settled(entry)


def _encoded_smaller(forms: DeadLetterForms, refusal: str) -> EncodedEvent | None:
    """The next smaller dead-letter form that encodes, as a message body; None when none is left."""
    while (smaller := forms.smaller(refusal)) is not None:
        try:
            return EncodedEvent(event_to_body(smaller))
        except DataError as exc:
            refusal = exc.reason
    return None
