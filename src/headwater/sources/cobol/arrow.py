"""The vectorised path: a batch of frames to one Arrow table per record type, with numpy.

Frames of one type are stacked into a 2-D uint8 array (shorter ones padded with spaces up to the
type's maximum length). Every field is then decoded for all rows at once: at a fixed column when
nothing variable precedes it, else at a per-row offset (base + element size x ODO count, gathered
with fancy indexing). An OCCURS DEPENDING ON list is decoded at its maximum count for every row and
cut to each row's count. The checks and messages per frame are those of the dict path, in the same
order, so both paths agree (tests compare them on arbitrary bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.sources.cobol.fields import integer_values, np_array, vector_column
from headwater.sources.cobol.plan import Leaf

if TYPE_CHECKING:
    from headwater.sources.cobol.decode import CobolDecoder, _Type


def decode_arrow(decoder: CobolDecoder, frames: Sequence[bytes]) -> tuple[dict, dict, dict[int, str]]:
    """(tables, indices, errors): see `CobolDecoder.decode_arrow`."""
    from headwater.sources.cobol.decode import FrameError

    errors: dict[int, str] = {}
    groups: dict[str, list[int]] = {}
    if decoder.type_slot is None:
        groups[next(iter(decoder.types))] = list(range(len(frames)))
    else:
        at, size = decoder.type_slot[0], decoder.type_slot[1]
        keys = [f[at : at + size] for f in frames]
        kinds: dict[bytes, str] = {}
        failed: dict[bytes, str] = {}
        for key in set(keys):
            try:
                kinds[key] = decoder.record_type(b"\0" * at + key)
            except FrameError as exc:
                failed[key] = exc.reason
        for i, key in enumerate(keys):
            name = kinds.get(key)
            if name is None:
                reason = failed[key]
                errors[i] = f"{len(frames[i])} bytes: too short to hold {decoder.type_slot[3]}" if len(key) < size \
                    else reason  # fmt: skip
                continue
            group = groups.get(name)
            if group is None:
                groups[name] = [i]
            else:
                group.append(i)
    tables: dict[str, pa.Table] = {}
    indices: dict[str, np.ndarray] = {}
    for name, members in groups.items():
        t = decoder.types[name]
        index = np.array(members, dtype=np.int64)
        chosen = [frames[i] for i in members] if len(members) < len(frames) else list(frames)
        lengths = np.fromiter(map(len, chosen), dtype=np.int64, count=len(chosen))
        width = max(int(lengths.max()), t.compiled.max_length)
        if not (lengths == width).all():
            chosen = [f.ljust(width, b"\x40") for f in chosen]
        joined = b"".join(chosen)
        block = np.frombuffer(joined, dtype=np.uint8).reshape(len(members), width)
        counts, good = _counts(t, block, lengths, index, errors)
        if not good.all():
            block, counts, index = block[good], counts[good], index[good]
        if len(index):
            tables[name] = _table(decoder, t, block, counts)
            indices[name] = index
    return tables, indices, dict(sorted(errors.items()))


def _gather(block: np.ndarray, offsets: np.ndarray | int, size: int) -> np.ndarray:
    """(rows, size) bytes at a fixed column or at a per-row offset."""
    if isinstance(offsets, int):
        return block[:, offsets : offsets + size]
    positions = offsets[:, None] + np.arange(size, dtype=np.int64)
    return np.take_along_axis(block, positions, axis=1)


def _offsets(t: _Type, leaf: Leaf, counts: np.ndarray) -> np.ndarray | int:
    c = t.compiled
    if not leaf.odo_before:
        return leaf.base
    off = np.full(len(counts), leaf.base, dtype=np.int64)
    for j in leaf.odo_before:
        off += c.odos[j].element * counts[:, j]
    return off


def _counts(
    t: _Type, block: np.ndarray, lengths: np.ndarray, index: np.ndarray, errors: dict[int, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the ODO counts, and whether the frame can be laid out (reasons for the others in errors)."""
    c = t.compiled
    n = len(block)
    counts = np.zeros((n, len(c.odos)), dtype=np.int64)
    good = np.ones(n, dtype=bool)

    def fail(rows: np.ndarray, reasons: list[str]) -> None:
        for r, reason in zip(np.flatnonzero(rows).tolist(), reasons, strict=True):
            errors[int(index[r])] = reason
        good[rows] = False

    for odo in c.odos:
        leaf = c.leaves[odo.counter]
        size = leaf.item.storage
        at = _offsets(t, leaf, counts)
        if not isinstance(at, int):
            at = np.clip(at, 0, block.shape[1] - size)
        rows = good & (lengths < at + size)
        fail(
            rows,
            [f"{lengths[r]} bytes: too short for {t.name} (ends inside {leaf.column})" for r in np.flatnonzero(rows)],
        )
        values, valid, _ = integer_values(_gather(block, at, size), leaf.item)
        rows = good & ~valid
        fail(rows, [f"{leaf.column} (the OCCURS DEPENDING ON counter) does not decode"] * int(rows.sum()))
        rows = good & ((values < odo.minimum) | (values > odo.maximum))
        fail(
            rows,
            [
                f"{leaf.column}={values[r]} is outside OCCURS {odo.minimum} TO {odo.maximum}"
                for r in np.flatnonzero(rows)
            ],
        )
        counts[:, odo.index] = np.where(good, values, 0)
    need = np.full(n, c.base_length, dtype=np.int64)
    for odo in c.odos:
        if odo.variable:
            need += odo.element * counts[:, odo.index]
    rows = good & (lengths < need)
    fail(rows, [f"{lengths[r]} bytes: too short for {t.name} ({need[r]} bytes)" for r in np.flatnonzero(rows)])
    return counts, good


def _table(decoder: CobolDecoder, t: _Type, block: np.ndarray, counts: np.ndarray) -> pa.Table:
    c = t.compiled
    n = len(block)
    masks = _branch_masks(decoder, t, block, counts) if c.areas else None
    arrays: list[pa.Array] = []
    corrupt: list[np.ndarray] = []
    for leaf, dtype in zip(c.leaves, t.schema_types, strict=True):
        at, size = _offsets(t, leaf, counts), leaf.item.storage
        if not leaf.dims:
            array, bad = vector_column(
                _gather(block, at, size), leaf.item, decoder.table, decoder.code_page, decoder.trim,
                decoder.float_format,
            )  # fmt: skip
        else:
            array, bad = _list_column(decoder, t, block, leaf, at, counts)
        if masks is not None and leaf.branches:
            keep = np.ones(n, dtype=bool)
            for area, branch in leaf.branches:
                chosen = masks[area]
                if chosen is not None:
                    keep &= chosen[branch]
            if not keep.all():
                array = pc.if_else(np_array(keep), array, pa.scalar(None, type=dtype))
                bad = bad & keep
        arrays.append(array)
        corrupt.append(bad)
    names = list(c.columns)
    if decoder.multi:
        arrays.append(pa.repeat(pa.scalar(t.name), n))
        names.append("_record_type")
    arrays.append(_corrupt_column(corrupt, names[: len(c.leaves)], n))
    names.append("_corrupt_fields")
    return pa.Table.from_arrays(arrays, names=names)


def _list_column(
    decoder: CobolDecoder, t: _Type, block: np.ndarray, leaf: Leaf, at: np.ndarray | int, counts: np.ndarray
) -> tuple[pa.Array, np.ndarray]:
    n = len(block)
    size = leaf.item.storage
    sizes = [count for count, _, _ in leaf.dims]
    relative = np.zeros((), dtype=np.int64)
    for count, stride, _ in leaf.dims:
        relative = relative[..., None] + np.arange(count, dtype=np.int64) * stride
    per_row = int(np.prod(sizes))
    cells_at = relative.reshape(-1)[:, None] + np.arange(size, dtype=np.int64)  # (per_row, size)
    if isinstance(at, int):
        cells = block[:, at + cells_at]
    else:
        cells = np.take_along_axis(block, (at[:, None, None] + cells_at[None]).reshape(n, -1), axis=1)
    array, bad = vector_column(
        cells.reshape(n * per_row, size), leaf.item, decoder.table, decoder.code_page, decoder.trim,
        decoder.float_format,
    )  # fmt: skip
    bad = bad.reshape(n, per_row)
    outer = leaf.dims[0][2]
    inner = per_row // sizes[0] if sizes[0] else 0
    if outer is not None:
        row_counts = counts[:, outer]
        keep = (np.arange(per_row) // max(inner, 1))[None, :] < row_counts[:, None]
        if not keep.all():
            array = array.take(np_array(np.flatnonzero(keep)))
            bad = bad & keep
    else:
        row_counts = np.full(n, sizes[0], dtype=np.int64)
    for level in range(len(sizes) - 1, 0, -1):
        lists = len(array) // sizes[level]
        array = pa.ListArray.from_arrays(np_array(np.arange(lists + 1, dtype=np.int32) * sizes[level]), array)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(row_counts, out=offsets[1:])
    return pa.ListArray.from_arrays(np_array(offsets), array), np.asarray(bad.any(axis=1))


def _branch_masks(
    decoder: CobolDecoder, t: _Type, block: np.ndarray, counts: np.ndarray
) -> list[dict[str, np.ndarray] | None]:
    from headwater.sources.cobol.decode import _case_key

    c = t.compiled
    out: list[dict[str, np.ndarray] | None] = []
    for area in c.areas:
        if area.selector is None:
            out.append(None)
            continue
        leaf = c.leaves[area.selector]
        cells = _gather(block, _offsets(t, leaf, counts), leaf.item.storage)
        values, _ = vector_column(cells, leaf.item, decoder.table, decoder.code_page, True, decoder.float_format)
        uniques = pc.unique(values).to_pylist()
        masks = {branch: np.zeros(len(block), dtype=bool) for branch in area.branches}
        for value in uniques:
            branch = area.cases.get(_case_key(value)) if value is not None else None
            if branch is not None:
                hit = pc.equal(values, pa.scalar(value, type=values.type)).fill_null(False)
                masks[branch] |= hit.to_numpy(zero_copy_only=False)
        out.append(masks)
    return out


def _corrupt_column(masks: list[np.ndarray], names: list[str], n: int) -> pa.Array:
    if not masks or not any(m.any() for m in masks):
        return pa.ListArray.from_arrays(np_array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))
    matrix = np.stack(masks, axis=1)
    rows, cols = np.nonzero(matrix)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    values = pa.array([names[c] for c in cols.tolist()], type=pa.string())
    return pa.ListArray.from_arrays(np_array(offsets), values)
