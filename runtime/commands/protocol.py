"""``meshconnect protocol encode|decode``: the EventMesh TCP codec on the command line.

``encode`` reads JSON lines ``{"header": {...}, "body_text": "..."}`` (the exact body text) or
``{"header": {...}, "body": <json>}`` (a value written like Java's Jackson, so a string becomes a quoted
JSON string) and prints each frame as lower-case hex. The header object is written as given, key order
included, with Jackson's escaping.

``decode`` reads hex lines (one or more frames, or part of one) and decodes each line with a fresh
decoder the way the Java runtime does, printing per line::

    {"packages": [{"header": {"cmd", "code", "desc", "seq", "properties"}, "body_text": "..." | null}],
     "error": null | "<why the Java runtime would close the connection>", "unconsumed_bytes": N}

A line that cannot be read gives an error object on its output line; the next line is processed as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import IO, Any

import orjson

from runtime.errors import HeaderlessFrameError, LocalProtocolError, RemoteProtocolError
from runtime.protocol import jackson
from runtime.protocol.frames import FrameDecoder, Package
from runtime.protocol.java import frame_as_written, headerless_header_view, java_header_view

__all__ = ["decode_line", "encode_line", "register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("protocol", help="encode or decode EventMesh TCP frames (hex)", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    encoder = actions.add_parser("encode", help="JSON lines {header, body_text|body} -> frame hex lines")
    encoder.add_argument("input", nargs="?", default="-", help="file to read (default: standard input)")
    encoder.set_defaults(func=lambda args: _run(args.input, encode_line))
    decoder = actions.add_parser("decode", help="frame hex lines -> JSON lines {packages, error, unconsumed_bytes}")
    decoder.add_argument("input", nargs="?", default="-", help="file to read (default: standard input)")
    decoder.set_defaults(func=lambda args: _run(args.input, decode_line))


def _run(path: str, convert: Any) -> int:
    with _open(path) as lines:
        out = sys.stdout
        try:
            for line in lines:
                if line.strip():
                    out.write(convert(line) + "\n")
                    out.flush()
        except BrokenPipeError:  # the reader went away (e.g. `| head`); keep the exit-time flush quiet too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _open(path: str) -> contextlib.AbstractContextManager[IO[str]]:
    """The input file, or standard input (left open) for ``-``."""
    if path == "-":
        return contextlib.nullcontext(sys.stdin)
    return open(path, encoding="utf-8")


def encode_line(line: str) -> str:
    """One JSON line to the frame hex, or an ``{"error": ...}`` object."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("header"), dict):
            raise ValueError('expected an object {"header": {...}, "body_text": "..."} or {"header": {...}, "body": ...}')
        if "body_text" in request and request["body_text"] is not None:
            if not isinstance(request["body_text"], str):
                raise ValueError("body_text must be a string")
            body = request["body_text"].encode("utf-8", "surrogatepass")
        elif "body" in request and request["body"] is not None:
            body = jackson.dumps(request["body"])
        else:
            body = b""
        return frame_as_written(jackson.dumps(request["header"]), body).hex()
    except (ValueError, TypeError, LocalProtocolError) as exc:
        return json.dumps({"error": str(exc)}, ensure_ascii=False)


def decode_line(line: str) -> str:
    """One hex line to ``{"packages": [...], "error": ..., "unconsumed_bytes": N}``."""
    try:
        data = bytes.fromhex(line.strip())
    except ValueError as exc:
        return _dumps({"packages": [], "error": f"input is not hex: {exc}", "unconsumed_bytes": 0})
    decoder = FrameDecoder()
    views: list[dict[str, Any]] = []
    error: RemoteProtocolError | None = None
    while True:
        try:
            views += [_package_view(package) for package in decoder.feed(data)]
            break
        except HeaderlessFrameError as headerless:  # Java delivers it and goes on decoding
            views += [_package_view(package) for package in headerless.packages]
            views.append({"header": headerless_header_view(headerless), "body_text": None})
            data = b""
        except RemoteProtocolError as exc:
            views += [_package_view(package) for package in exc.packages]
            error = exc
            break
    return _dumps({"packages": views, "error": None if error is None else str(error), "unconsumed_bytes": decoder.buffered})


def _package_view(package: Package) -> dict[str, Any]:
    return {"header": java_header_view(package.header), "body_text": package.text()}


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits in header properties
        return json.dumps(value, ensure_ascii=False)
