"""Request signatures of http-source: HMAC-SHA256 over the body alone, or over the whole CloudEvent.

``body`` mode is what GitHub, Stripe-style and most webhook senders do: the ``X-Hub-Signature-256``
header holds ``sha256=`` and the hex HMAC-SHA256 of the raw body. It proves the body; the headers
(``ce-subject``, ``ce-type``, ``ce-id`` of a binary-mode CloudEvent) can be changed on the way.

``cloudevent`` mode signs everything the event is made of. ``X-Meshconnect-Signature`` holds
``sha256=`` and the hex HMAC-SHA256 of these bytes::

    METHOD "\\n" TARGET "\\n" CONTENT-TYPE "\\n" HEADERS "\\n" BODY

* METHOD: ``POST``; TARGET: the request target as sent on the request line (path and query);
* CONTENT-TYPE: the ``Content-Type`` header value as sent (empty when there is none);
* HEADERS: one line ``name ":" value "\\n"`` for each signed header present, in order of name:
  every header whose name starts with ``ce-``, plus ``x-github-event`` and the ``id_headers``
  (the other headers the source reads); names in lower case, values as sent without the spaces
  around them. No header may appear twice;
* BODY: the raw body bytes.

Text is UTF-8. Header names cannot hold ``:`` or a line break and values cannot hold a line break,
so the empty line ends the header block unambiguously.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping

__all__ = ["BODY_HEADER", "CLOUDEVENT_HEADER", "body_signature", "canonical_request", "cloudevent_signature"]

BODY_HEADER = "X-Hub-Signature-256"
CLOUDEVENT_HEADER = "X-Meshconnect-Signature"


def canonical_request(
    method: str, target: str, headers: Mapping[str, str], body: bytes, *, signed_headers: Collection[str]
) -> bytes:
    """The bytes ``cloudevent`` mode signs (see the module docstring); ``headers`` has lower-case names."""
    lines = [method.upper(), target, headers.get("content-type", "").strip()]
    signed = sorted(name for name in headers if name.startswith("ce-") or name in signed_headers)
    head = "\n".join(lines) + "\n" + "".join(f"{name}:{headers[name].strip()}\n" for name in signed) + "\n"
    return head.encode("utf-8", "surrogateescape") + body


def body_signature(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def cloudevent_signature(secret: bytes, canonical: bytes) -> str:
    """The ``X-Meshconnect-Signature`` value for a canonical request."""
    return "sha256=" + hmac.new(secret, canonical, hashlib.sha256).hexdigest()
