"""The `cobol` format: EBCDIC records laid out by COBOL copybooks (fixed, RDW or BDW; several record types).

`copybook` parses copybooks, `plan` lays them out, `fields` holds the codecs, `decode` the decoder
(dicts, or Arrow tables vectorised with numpy), `records` splits files into records, `encode` writes
records (for generators and benchmarks).
"""

from headwater.sources.cobol.copybook import CobolError, CopybookError, Item, Layout, load_copybook, parse_copybook
from headwater.sources.cobol.decode import ArrowBatch, CobolDecoder, DecodedBatch, FrameError

__all__ = [
    "ArrowBatch",
    "CobolDecoder",
    "CobolError",
    "CopybookError",
    "DecodedBatch",
    "FrameError",
    "Item",
    "Layout",
    "load_copybook",
    "parse_copybook",
]
