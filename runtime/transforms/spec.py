"""The config of one transform step: a mapping with one of the step keys, and an optional ``name``.

Each step key takes its language's text directly (``filter: 'type != "heartbeat"'`` is CEL,
``map: '.after'`` is jq), or a mapping naming the language (``filter: {cel: ...}``,
``map: {jq: ...}``, ``{eventmesh: ...}`` for Apache EventMesh's filter patterns and transformers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime.config import Secret

__all__ = ["STEP_KINDS", "MaskSpec", "StepSpec"]

STEP_KINDS = ("filter", "route", "set", "remove", "map", "mask")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaskSpec(_Strict):
    fields: list[str] = Field(min_length=1, description="Paths into the data (dots for nesting, digits index lists).")
    method: Literal["hmac", "redact"] = Field(
        "hmac", description="hmac: the value's HMAC-SHA256 in hex (equal values stay equal, so joins work); redact: replacement."
    )
    secret: Secret | None = Field(
        None, description="method hmac: the key the hashes are made with ({env: NAME} or {file: PATH}; never logged)."
    )
    replacement: str = Field("REDACTED", description="method redact: what each value becomes.")

    @model_validator(mode="after")
    def _key_for_hmac(self) -> MaskSpec:
        if self.method == "hmac" and (self.secret is None or not self.secret.get_secret_value()):
            raise ValueError("method 'hmac' needs 'secret': the key the hashes are made with ({env: NAME} or {file: PATH})")
        return self


class StepSpec(_Strict):
    name: str | None = Field(None, min_length=1, description="The step's name in errors, dead letters and metrics.")
    filter: str | dict[str, Any] | None = Field(
        None,
        description="Keep the event when this CEL expression (or {eventmesh: pattern}) holds; else drop it (committed).",
    )
    route: str | None = Field(
        None, description="CEL giving the topic (source; one the config allows) or the sink's target (e.g. mysql-sink's table)."
    )
    set: dict[str, str] | None = Field(
        None, description="Attribute (type, datacontenttype, dataschema, time) or extension name -> CEL giving its value."
    )
    remove: list[str] | None = Field(None, description="Extensions (or dataschema) to remove.")
    map: str | dict[str, Any] | None = Field(
        None, description="jq program giving the new data from the data (or {eventmesh: transformer} giving it from the event)."
    )
    mask: MaskSpec | None = Field(None, description="Fields of the data to hash (keyed HMAC) or redact.")

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        given = [kind for kind in STEP_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"a step has exactly one of {', '.join(STEP_KINDS)}; this one has {', '.join(given) or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in STEP_KINDS if getattr(self, kind) is not None)
