"""Reading an annotation run: its committed parts, whether it was sharded by the Ray job or written in one
process (``annotate.runner=local``: ``texts.parquet`` + ``annotations.parquet``, read as a single part)."""

from __future__ import annotations

from dataclasses import dataclass

from toolformer.run.shards import Manifest, RunState
from toolformer.run.store import Store

LOCAL_PART = "local"  # the shard id a single-process run's one part goes by


@dataclass(frozen=True)
class RunPart:
    shard_id: str
    index: int  # the shard's place in the manifest: C* part files are numbered by it
    texts: str  # paths relative to the run directory
    annotations: str


class AnnotationRun:
    def __init__(self, uri: str):
        self.store = Store(uri)
        self.sharded = self.store.exists("manifest.json")

    def parts(self) -> list[RunPart]:
        """Committed parts in manifest order; an error naming the missing step when there are none."""
        if self.sharded:
            manifest = Manifest.load(self.store)
            state = RunState(self.store, "annotate")
            done = state.done()
            parts = [self._part(state, s.shard_id, i) for i, s in enumerate(manifest.shards) if s.shard_id in done]
            if not parts:
                raise SystemExit(f"no annotated shards in {self.store.uri}: run jobs.annotate with the same config first")
            return parts
        for name in ("annotations.parquet", "texts.parquet"):
            if not self.store.exists(name):
                raise SystemExit(f"{self.store.path(name)} not found: run jobs.annotate with the same config first")
        return [RunPart(LOCAL_PART, 0, "texts.parquet", "annotations.parquet")]

    @staticmethod
    def _part(state: RunState, shard_id: str, index: int) -> RunPart:
        """A committed shard's files, as its marker names them (one marker read for both)."""
        marker = state.marker(shard_id) or {}
        return RunPart(shard_id, index, state.output(shard_id, "texts", marker),
                       state.output(shard_id, "annotations", marker))

    def texts_path(self, shard_id: str) -> str:
        if shard_id == LOCAL_PART:
            return "texts.parquet"
        return RunState(self.store, "annotate").output(shard_id, "texts")

    def info(self) -> dict:
        if not self.sharded:
            return {"shards_merged": 1, "shards_total": 1, "shards_quarantined": []}
        manifest = Manifest.load(self.store)
        state = RunState(self.store, "annotate")
        return {"shards_merged": len(state.done()), "shards_total": len(manifest.shards),
                "shards_quarantined": sorted(state.quarantined())}
