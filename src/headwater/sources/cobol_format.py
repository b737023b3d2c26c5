"""The `cobol` format of a source: the `cobol` options to a batch decoder and a record splitter.

`decode = "full"` (default) decodes every field; `decode = "header"` decodes only the header (or
the type field) and keeps the frame as base64 in `_frame`, for a processor that correlates frames
first and decodes only the matched ones with `CobolDecoder.decode_one` (PMU's decode on demand).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from headwater.core.errors import RecordError, SourceError
from headwater.sources.cobol.copybook import CobolError
from headwater.sources.cobol.decode import CobolDecoder
from headwater.sources.cobol.records import iter_records
from headwater.sources.formats import Decoded

_SPLIT_ONLY = ("decode",)


def decoder_from(options: dict[str, Any], base_dir: Path) -> CobolDecoder:
    """The CobolDecoder the `cobol` options describe (a clear SourceError when they are wrong)."""
    try:
        return CobolDecoder.from_options({k: v for k, v in options.items() if k not in _SPLIT_ONLY}, base_dir)
    except (CobolError, OSError) as exc:
        raise SourceError(f"cobol options: {exc}") from exc


def cobol_batch_decoder(options: dict[str, Any], base_dir: Path) -> Callable[[list[bytes]], list[Decoded]]:
    decoder = decoder_from(options, base_dir)
    mode = options.get("decode", "full")
    if mode not in ("full", "header"):
        raise SourceError(f"cobol.decode must be full or header, not {mode!r}")

    if mode == "header":

        def headers(frames: list[bytes]) -> list[Decoded]:
            out: list[Decoded] = []
            for frame in frames:
                try:
                    record = decoder.header(frame)
                except CobolError as exc:  # a frame too short for its header
                    out.append(RecordError(str(exc)))
                    continue
                if record.get("_record_type") is None and decoder.multi:
                    out.append(RecordError("the frame's record type is unknown or unreadable"))
                    continue
                record["_frame"] = base64.b64encode(frame).decode()
                out.append([record])
            return out

        return headers

    def full(frames: list[bytes]) -> list[Decoded]:
        batch = decoder.decode_batch(frames)
        return [
            [record] if record is not None else RecordError(batch.errors.get(i, "does not decode"))
            for i, record in enumerate(batch.records)
        ]

    return full


def split_frames(stream: BinaryIO, options: dict[str, Any]) -> Iterator[bytes]:
    """The records of a file of frames: fixed length, RDW or BDW+RDW (`record_format`)."""
    length = options.get("record_length")
    fmt = str(options.get("record_format", "fixed"))
    if fmt == "fixed" and length is None:
        raise SourceError("cobol.record_length is required for files of fixed-length records")
    return iter_records(stream, fmt, int(length) if length is not None else None)
