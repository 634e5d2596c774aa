"""Sans-IO EventMesh TCP protocol: frames (``frames``), Jackson-exact JSON (``jackson``), CloudEvent mapping (``events``)."""

from runtime.protocol.frames import (
    MAX_FRAME,
    Command,
    FrameDecoder,
    Header,
    HeaderlessFrame,
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
    "HeaderlessFrame",
    "Package",
    "RedirectInfo",
    "Subscription",
    "SubscriptionItem",
    "SubscriptionMode",
    "SubscriptionType",
    "UserAgent",
    "encode",
    "java_hashmap_order",
]
