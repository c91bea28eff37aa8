"""Parquet schemas of every hand-off, defined once, and an atomic writer.

docs         one row per document in a prepared shard (jobs.prepare)
texts        one row per annotated text (a document chunk)
work         what flows between the annotation stages (a text x tool row, candidates nested)
annotations  one row per text and tool, candidates nested
cstar        the augmented corpus C*: texts with their surviving calls inserted
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

DOCS = pa.schema(
    [
        ("doc_id", pa.string()),  # the cc_net digest when the record has one
        ("shard_id", pa.string()),
        ("url", pa.string()),
        ("date", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),  # file:line it was read from
        ("meta", pa.string()),  # the remaining cc_net fields, as JSON
    ]
)

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
        # annotated | heuristic_rejected | too_long  (every text and tool has a row, whatever happened)
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

# Between stages (Ray Data blocks, or the plain loop's batches): texts' fields, the annotation so far, and
# what the LM stages share (the text's token ids and offsets). Scoring drops the bulky columns again.
WORK = pa.schema(
    [
        ("shard_id", pa.string()),
        *[f for f in TEXTS if f.name not in ("text_id", "doc_id")],
        *ANNOTATIONS,
        ("context", pa.string()),  # JSON: what the tool is told (the document date for Calendar)
        ("x_ids", pa.list_(pa.int32())),
        ("x_offsets", pa.list_(pa.list_(pa.int32()))),
        ("tool_ms", pa.float64()),  # wall time of this row's tool calls
    ]
)

# A stage's output once scored: the annotation and its text, without token ids (what a shard commits).
SCORED = pa.schema([f for f in WORK if f.name not in ("x_ids", "x_offsets", "context")])

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
        ("text", pa.string()),  # with calls inserted
        ("n_calls", pa.int32()),
        ("calls", pa.list_(CALL)),
    ]
)


def to_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    """Rows to a table of exactly ``schema`` (extra keys are dropped, a missing column is an error)."""
    rows = list(rows)
    return pa.Table.from_pylist([{name: row[name] for name in schema.names} for row in rows], schema=schema)


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
