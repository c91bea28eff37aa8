"""A run directory on a local disk or an object store (``s3://``, ``gs://``), through pyarrow's filesystems: what
every record of a run (manifest, shards, markers, the lease) is read from and written to."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


GCS_RETRY_S = 12.0  # = conditional.REQUEST_BOUND_S (the conditional writes import this module, not the reverse)


def gcs_filesystem() -> pafs.FileSystem:
    """pyarrow's GCS filesystem with its retries bounded (``GCS_RETRY_S``); against the emulator
    ``STORAGE_EMULATOR_HOST`` names (as google-cloud-storage honours it; pyarrow's ``from_uri`` does not)."""
    import datetime as dt

    opts: dict[str, Any] = {"retry_time_limit": dt.timedelta(seconds=GCS_RETRY_S)}
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        scheme, _, address = host.rpartition("://")
        opts.update(anonymous=True, scheme=scheme or "http", endpoint_override=address)
    return pafs.GcsFileSystem(**opts)


class Store:
    """A run directory on a local disk or an object store, through pyarrow's filesystems."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        self.local = "://" not in root or root.startswith("file://")
        if self.local:
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.root = str(Path(root.removeprefix("file://")).resolve())
        elif root.startswith("gs://"):
            self.fs, self.root = gcs_filesystem(), root.removeprefix("gs://").rstrip("/")
        else:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        self.uri = root

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Readers see the old object or the whole new one, never a part."""
        target = self.path(*parts)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self.local:  # an object put is atomic
            with self.fs.open_output_stream(target) as f:
                f.write(data)
            return target
        tmp = f"{parent}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_bytes(json.dumps(obj, indent=2, default=str).encode(), *parts)

    def write_table(self, table: pa.Table, *parts: str) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.write_bytes(buf.getvalue(), *parts)

    def read_table(self, *parts: str) -> pa.Table:
        return pq.read_table(self.path(*parts), filesystem=self.fs)

    def names(self, *parts: str, suffix: str = "") -> list[str]:
        """File names directly under a directory (none if it does not exist)."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(
            i.base_name for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith(".")
        )

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def delete_file(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_file(self.path(*parts))
