"""Parquet schemas of every hand-off, defined once, and an atomic writer.

shard        a prepared shard: one row per text (a document chunk), in document order (jobs.prepare)
texts        one row per annotated text
annotations  one row per text and tool, candidates nested
work         what flows between the annotation stages (a text x tool row, candidates nested)
staged       a scored batch written by the Ray job before its shard is committed
cstar        the augmented corpus C*: texts with their surviving calls inserted
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

TEXTS = pa.schema(
    [
        ("text_id", pa.string()),  # doc_id#chunk
        ("doc_id", pa.string()),  # the cc_net digest when the record has one
        ("chunk", pa.int32()),
        ("url", pa.string()),
        ("date", pa.string()),
        ("title", pa.string()),
        ("source", pa.string()),  # file:line it was read from
        ("text", pa.string()),
    ]
)

# Chunked at prepare time, so that the manifest knows how many texts (and so annotation rows) each shard has.
SHARD = pa.schema(
    [
        ("shard_id", pa.string()),
        *TEXTS,
        ("meta", pa.string()),  # the record's other fields (cc_net's), as JSON
    ]
)

CANDIDATE = pa.struct(
    [
        ("position", pa.int32()),  # token index i in x: the call goes before x_i
        ("char_start", pa.int32()),  # where in the text the call is inserted
        ("p_start", pa.float64()),  # P(start of call) at i
        ("call", pa.string()),  # the call as sampled, without result: [Tool(input)]
        ("input", pa.string()),
        ("result", pa.string()),  # null when the tool returned nothing
        ("error", pa.string()),
        ("loss_none", pa.float64()),  # L_i(ε)
        ("loss_call_only", pa.float64()),  # L_i(e(c, ε)); null when it could not matter (see gain)
        ("loss_call_result", pa.float64()),  # L_i(e(c, r))
        ("gain", pa.float64()),  # min(L(ε), L(e(c,ε))) - L(e(c,r)); null when below the scoring floor
        ("kept", pa.bool_()),  # gain >= the tool's τf
    ]
)

ANNOTATIONS = pa.schema(
    [
        ("text_id", pa.string()),
        ("doc_id", pa.string()),
        ("tool", pa.string()),
        # annotated | heuristic_rejected | too_long | empty (every text and tool has a row, whatever happened)
        ("status", pa.string()),
        ("heuristic", pa.string()),  # which rule let it in, or why not
        ("n_tokens", pa.int32()),
        ("positions", pa.list_(pa.int32())),  # where calls were sampled, best p_start first
        ("n_positions", pa.int32()),
        ("n_samples", pa.int32()),
        ("n_closed", pa.int32()),  # samples that ended with "]"
        ("n_parsed", pa.int32()),  # closed samples that parse as a call of this tool
        ("n_candidates", pa.int32()),  # distinct parsed calls per position
        ("n_executed", pa.int32()),  # candidates the tool returned a result for
        ("n_kept", pa.int32()),
        ("candidates", pa.list_(CANDIDATE)),
    ]
)

# Between stages (Ray Data blocks, or the plain loop's batches): the annotation so far, the text and what the
# tool is told, and what the LM stages share (the text's token ids and offsets).
WORK = pa.schema(
    [
        ("shard_id", pa.string()),
        *ANNOTATIONS,
        ("text", pa.string()),
        ("context", pa.string()),  # JSON: what the tool is told (the document date for Calendar)
        ("x_ids", pa.list_(pa.int32())),
        ("x_offsets", pa.list_(pa.list_(pa.int32()))),
        ("tool_ms", pa.float64()),  # wall time of this row's tool calls
        # Set when a stage failed on this row's shard (or the shard could not be read): the row then passes
        # through the later stages untouched and the shard is retried. "fatal: ..." quarantines at once.
        ("error", pa.string()),
    ]
)

# What a scored batch stages for its shard's commit (token ids and text dropped; tool_ms kept for the stats).
STAGED = pa.schema([("shard_id", pa.string()), *ANNOTATIONS, ("tool_ms", pa.float64())])

CALL = pa.struct(
    [
        ("tool", pa.string()),
        ("input", pa.string()),
        ("result", pa.string()),
        ("position", pa.int32()),  # token index in the original text
        ("char_start", pa.int32()),  # offset of "[" in the augmented text
        ("char_end", pa.int32()),  # offset after "]"
        ("gain", pa.float64()),
    ]
)

CSTAR = pa.schema(
    [
        ("text_id", pa.string()),
        ("doc_id", pa.string()),
        ("shard_id", pa.string()),  # the annotation shard it came from (where its original text is)
        ("text", pa.string()),  # with calls inserted
        ("n_calls", pa.int32()),
        ("calls", pa.list_(CALL)),
    ]
)


def to_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    """Rows to a table of exactly ``schema`` (extra keys are dropped, a missing column is an error)."""
    rows = list(rows)
    return pa.Table.from_pylist([{name: row[name] for name in schema.names} for row in rows], schema=schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns of ``schema``, in its order and types (extra columns dropped)."""
    return table.select(schema.names).cast(schema)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write next to the target, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_rows(path: str | os.PathLike) -> list[dict]:
    return pq.read_table(path).to_pylist()
