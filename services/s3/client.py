"""What s3-source and s3-sink share: the connection settings, the client, and the one seam for its errors.

Both sides reach S3 (or any S3-compatible store: MinIO, Ceph, moto) through :func:`s3_client` and
:func:`s3_call`. A refused credential or a missing bucket is a :class:`ConfigError` naming the key
to fix; throttling, 5xx answers, timeouts and connection failures are a :class:`RetriableError`;
"no such key" and a failed precondition (``If-Match``) come back as :class:`S3Answer` codes the
caller decides about. Every call runs under ``timeout``; botocore's own retries are off, so the
worker's backoff is the only retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Literal, TypeVar

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from pydantic import Field, field_validator

from runtime import ConfigError, ConnectorConfig, HttpEndpoint, RetriableError, Secret

__all__ = ["S3Config", "S3Missing", "S3PreconditionFailed", "ensure_bucket", "s3_call", "s3_client"]

T = TypeVar("T")

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_ACCESS_REFUSED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
_PRECONDITION = frozenset({"PreconditionFailed", "412"})


class S3Missing(RetriableError):
    """The object (or upload) asked for does not exist; callers that expect this catch it."""


class S3PreconditionFailed(RetriableError):
    """An ``If-Match`` condition failed: the object changed since its ETag was read."""


class S3Config(ConnectorConfig):
    """Where the bucket is and how to sign in; the source's and the sink's config models add their own keys."""

    bucket: str = Field(description="The bucket (3-63 lower-case letters, digits, dots, hyphens).")
    prefix: str = Field("", description="Only keys under this prefix (source: read; sink: written), e.g. events/.")
    endpoint_url: HttpEndpoint | None = Field(
        None, description="An S3-compatible endpoint (MinIO, Ceph); unset: AWS for the region."
    )
    region: str = Field("us-east-1", min_length=1, description="The region to sign requests for.")
    access_key_id: Secret | None = Field(None, description="Access key id; unset: the AWS default chain (env, profile, role).")
    secret_access_key: Secret | None = Field(None, description="Secret access key, with access_key_id.")
    path_style: bool = Field(False, description="Address the bucket in the path (MinIO, moto) instead of the host name.")
    timeout: float = Field(10.0, gt=0, description="Seconds for any one S3 call (connect, send, answer).")
    create_bucket: bool = Field(False, description="Create the bucket at start when it does not exist.")

    @field_validator("bucket")
    @classmethod
    def _valid_bucket(cls, bucket: str) -> str:
        if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"{bucket!r} is not a valid bucket name: 3-63 lower-case letters, digits, dots and hyphens")
        return bucket

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str) -> str:
        if prefix.startswith("/") or any(part in (".", "..") for part in prefix.split("/")[:-1]):
            raise ValueError(f"prefix {prefix!r} must not start with '/' or hold '.' or '..' segments")
        return prefix


@contextlib.asynccontextmanager
async def s3_client(config: S3Config) -> AsyncIterator[Any]:
    """An S3 client for ``config``; no IO until its first call."""
    addressing: Literal["path", "auto"] = "path" if config.path_style else "auto"
    options = AioConfig(
        connect_timeout=config.timeout,
        read_timeout=config.timeout,
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": addressing},
    )
    credentials: dict[str, str] = {}
    if config.access_key_id is not None:
        credentials["aws_access_key_id"] = config.access_key_id.get_secret_value()
    if config.secret_access_key is not None:
        credentials["aws_secret_access_key"] = config.secret_access_key.get_secret_value()
    client = get_session().create_client(
        "s3", region_name=config.region, endpoint_url=config.endpoint_url, config=options, **credentials
    )
    async with client as s3:
        yield s3


async def s3_call(what: str, call: Awaitable[T], config: S3Config) -> T:
    """Await one S3 call under ``config.timeout``; the one seam where botocore's errors become ours."""
    try:
        async with asyncio.timeout(config.timeout):
            return await call
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _ACCESS_REFUSED or status == 403:
            raise ConfigError(
                "config.access_key_id",
                f"S3 refused the credentials during {what} on bucket {config.bucket!r} ({code or status})",
                "give a key pair allowed to list, read and write the bucket",
            ) from exc
        if code == "NoSuchBucket":
            raise ConfigError("config.bucket", f"bucket {config.bucket!r} does not exist", "create it or name another") from exc
        if code in _MISSING:
            raise S3Missing(f"S3 {what}: not found ({code})") from exc
        if code in _PRECONDITION:
            raise S3PreconditionFailed(f"S3 {what}: the object changed ({code})") from exc
        raise RetriableError(f"S3 unavailable during {what} on bucket {config.bucket!r}: {code or status}") from exc
    except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise RetriableError(f"S3 unavailable during {what} on bucket {config.bucket!r}: {exc.__class__.__name__}") from exc


async def ensure_bucket(s3: Any, config: S3Config) -> None:
    """Check that the bucket exists and the credentials reach it; create it if missing and ``create_bucket``."""
    try:
        await s3_call("head bucket", s3.head_bucket(Bucket=config.bucket), config)
    except S3Missing as exc:
        if not config.create_bucket:
            raise ConfigError(
                "config.bucket", f"bucket {config.bucket!r} does not exist", "create it, name another, or set create_bucket"
            ) from exc
        await s3_call("create bucket", s3.create_bucket(Bucket=config.bucket), config)
