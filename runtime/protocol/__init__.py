"""Sans-IO EventMesh TCP protocol: frames (``frames``), Jackson-exact JSON (``jackson``), CloudEvent mapping (``events``)."""

from runtime.protocol.events import (
    ack_frame,
    body_to_event,
    body_to_event_and_transport,
    event_to_body,
    publish_frame,
    push_package,
)
from runtime.protocol.frames import (
    MAX_FRAME,
    Command,
    FrameDecoder,
    Header,
    Package,
    RedirectInfo,
    Subscription,
    SubscriptionItem,
    SubscriptionMode,
    SubscriptionType,
    UserAgent,
    encode,
)
from runtime.protocol.jackson import java_hashmap_order

__all__ = [
    "MAX_FRAME",
    "Command",
    "FrameDecoder",
    "Header",
    "Package",
    "RedirectInfo",
    "Subscription",
    "SubscriptionItem",
    "SubscriptionMode",
    "SubscriptionType",
    "UserAgent",
    "ack_frame",
    "body_to_event",
    "body_to_event_and_transport",
    "encode",
    "event_to_body",
    "java_hashmap_order",
    "publish_frame",
    "push_package",
]
