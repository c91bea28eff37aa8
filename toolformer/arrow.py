"""Small pyarrow helpers the stages share: set typed columns, edit nested candidates, work on a subset.

Stages keep their batches in Arrow; only the values the method needs as Python objects (texts to tokenize,
tool inputs, sampled strings) are taken out, and what they produce is put back as typed columns.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def column_array(values: Any, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type=type_)


def set_columns(table: pa.Table, schema: pa.Schema, **columns: Any) -> pa.Table:
    """Replace (or append) columns, typed as ``schema`` says."""
    for name, values in columns.items():
        field = schema.field(name)
        arr = column_array(values, field.type)
        i = table.schema.get_field_index(name)
        table = table.set_column(i, field, arr) if i >= 0 else table.append_column(field, arr)
    return table


def empty_lists(n: int, type_: pa.ListType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], type=type_.value_type))


def list_offsets(lists: pa.ListArray) -> pa.Array:
    """0-based offsets of a (possibly sliced) list array: where each row's values start in ``flatten()``."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    return pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))


def struct_fields(lists: pa.ChunkedArray | pa.ListArray, *names: str) -> dict[str, list]:
    """Python values of some fields of every nested struct (flattened across rows)."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = arr.flatten()
    return {n: flat.field(n).to_pylist() for n in names}


def parent_rows(lists: pa.ChunkedArray | pa.ListArray) -> np.ndarray:
    """For every nested value, the index of the row it belongs to."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    return pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)


def replace_struct_fields(lists: pa.ChunkedArray | pa.ListArray, **fields: Sequence) -> pa.ListArray:
    """The same list<struct> column with some struct fields replaced (values given flat, in nested order)."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = arr.flatten()
    struct_type: pa.StructType = arr.type.value_type
    children = []
    for f in struct_type:
        children.append(column_array(fields[f.name], f.type) if f.name in fields else flat.field(f.name))
    new_flat = pa.StructArray.from_arrays(children, fields=list(struct_type))
    return pa.ListArray.from_arrays(list_offsets(arr), new_flat, type=arr.type)


def on_subset(table: pa.Table, mask: np.ndarray, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
    """``fn`` applied to the rows where ``mask`` holds; the other rows unchanged; the row order kept."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        return fn(table)
    if not mask.any():
        return table
    done = fn(table.filter(pa.array(mask)))
    rest = table.filter(pa.array(~mask))
    order = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
    merged = pa.concat_tables([done, rest.select(done.column_names).cast(done.schema)])
    return merged.take(pa.array(np.argsort(order, kind="stable")))
