"""The typed message bodies of the session commands, as Java's beans: HELLO's ``UserAgent``, SUBSCRIBE's
``Subscription``, REDIRECT's ``RedirectInfo``.

Each is written with its fields in Java declaration order (``json_fields``, for ``jackson.dumps``) and
read the way Jackson reads the bean (``from_json``). The ``*_view`` functions give Jackson's view of a
body, the non-null fields in Java order: the decoder refuses a body Jackson would refuse through them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.protocol.jackson import JsonInvalid, as_enum, as_int, as_object, as_string

__all__ = [
    "RedirectInfo",
    "Subscription",
    "SubscriptionItem",
    "SubscriptionMode",
    "SubscriptionType",
    "UserAgent",
    "redirect_view",
    "subscription_view",
    "user_agent_view",
]


class SubscriptionMode(enum.Enum):
    """How a group shares a topic: one session per event (CLUSTERING) or every session (BROADCASTING)."""

    CLUSTERING = 0
    BROADCASTING = 1
    UNRECOGNIZED = 2


class SubscriptionType(enum.Enum):
    """Push style: SYNC pushes as REQUEST_TO_CLIENT (request-reply), ASYNC as ASYNC_MESSAGE_TO_CLIENT."""

    SYNC = 0
    ASYNC = 1
    UNRECOGNIZED = 2


@dataclass(frozen=True, slots=True)
class UserAgent:
    """The HELLO body. Field order is Java's; ``None`` fields are left out of the JSON."""

    env: str | None = None
    subsystem: str | None = None
    path: str | None = None
    pid: int = 0
    host: str | None = None
    port: int = 0
    version: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    idc: str | None = None
    group: str | None = None
    purpose: str | None = None
    unack: int = 0

    def json_fields(self) -> dict[str, Any]:
        return {name: value for name in _USER_AGENT_FIELDS if (value := getattr(self, name)) is not None}

    def __repr__(self) -> str:
        shown = {name: value for name, value in self.json_fields().items() if name not in ("password", "token")}
        secrets = [f"{name}='***'" for name in ("password", "token") if getattr(self, name) is not None]
        return "UserAgent(" + ", ".join([*(f"{name}={value!r}" for name, value in shown.items()), *secrets]) + ")"

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> UserAgent:
        fields: dict[str, Any] = {
            name: as_int(value.get(name), name) if name in _USER_AGENT_INTS else as_string(value.get(name), name)
            for name in _USER_AGENT_FIELDS
        }
        return cls(**fields)


_USER_AGENT_FIELDS = (
    "env",
    "subsystem",
    "path",
    "pid",
    "host",
    "port",
    "version",
    "username",
    "password",
    "token",
    "idc",
    "group",
    "purpose",
    "unack",
)
_USER_AGENT_INTS = frozenset({"pid", "port", "unack"})


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    """One subscribed topic."""

    topic: str
    mode: SubscriptionMode = SubscriptionMode.CLUSTERING
    type: SubscriptionType = SubscriptionType.ASYNC

    def json_fields(self) -> dict[str, Any]:
        return {"topic": self.topic, "mode": self.mode.name, "type": self.type.name}


@dataclass(frozen=True, slots=True)
class Subscription:
    """The SUBSCRIBE body: ``{"topicList":[...]}``."""

    topic_list: tuple[SubscriptionItem, ...] = ()

    def json_fields(self) -> dict[str, Any]:
        return {"topicList": [item.json_fields() for item in self.topic_list]}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Subscription:
        items = subscription_view(value).get("topicList") or []
        topic_list = []
        for index, item in enumerate(items):
            if item is None or item.get("topic") is None:
                raise JsonInvalid(f"topicList[{index}] has no topic")
            topic_list.append(
                SubscriptionItem(
                    topic=item["topic"],
                    mode=SubscriptionMode[item.get("mode", "CLUSTERING")],
                    type=SubscriptionType[item.get("type", "ASYNC")],
                )
            )
        return cls(tuple(topic_list))


@dataclass(frozen=True, slots=True)
class RedirectInfo:
    """The REDIRECT_TO_CLIENT body: where the client should reconnect."""

    ip: str
    port: int

    def json_fields(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RedirectInfo:
        view = redirect_view(value)
        if view.get("ip") is None:
            raise JsonInvalid("redirect has no ip")
        return cls(ip=view["ip"], port=view["port"])


def user_agent_view(value: Mapping[str, Any]) -> dict[str, Any]:
    return UserAgent.from_json(value).json_fields()


def _subscription_item_view(value: Any, index: int) -> dict[str, Any] | None:
    item = as_object(value, f"topicList[{index}]")
    if item is None:
        return None
    fields = {
        "topic": as_string(item.get("topic"), "topic"),
        "mode": as_enum(item.get("mode"), SubscriptionMode, "mode"),
        "type": as_enum(item.get("type"), SubscriptionType, "type"),
    }
    return {name: getattr(member, "name", member) for name, member in fields.items() if member is not None}


def subscription_view(value: Mapping[str, Any]) -> dict[str, Any]:
    items = value.get("topicList")
    if items is None:
        return {}
    if not isinstance(items, list):
        raise JsonInvalid(f"topicList must be a JSON array, got {type(items).__name__}")
    return {"topicList": [_subscription_item_view(item, index) for index, item in enumerate(items)]}


def redirect_view(value: Mapping[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"ip": as_string(value.get("ip"), "ip"), "port": as_int(value.get("port"), "port")}
    return {name: item for name, item in view.items() if item is not None}
