"""GCS through google-cloud-storage: generation preconditions on bounded requests."""

from __future__ import annotations

from typing import Any

from toolformer.run.conditional.base import (CONNECT_TIMEOUT_S, READ_TIMEOUT_S, REQUEST_BOUND_S, UPDATE_TRIES,
                                         UpdateConflict, VersionedConditional, WriteConflict)

_gcs_clients: dict = {}


def _gcs_bounds() -> dict:
    """A GCS request's bounds: timeouts, and google's own retries (it resends conditional uploads) cut off at
    ``REQUEST_BOUND_S``."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    retry = DEFAULT_RETRY.with_timeout(REQUEST_BOUND_S) if hasattr(DEFAULT_RETRY, "with_timeout") else \
        DEFAULT_RETRY.with_deadline(REQUEST_BOUND_S)
    return {"timeout": (CONNECT_TIMEOUT_S, READ_TIMEOUT_S), "retry": retry}


def gcs_client():
    """A google-cloud-storage client (anonymous against the emulator ``STORAGE_EMULATOR_HOST`` names); a clear
    error when the package is missing (requirements.txt, cluster/requirements-gpu.txt, ``pip install .[gcs]``)."""
    import os

    try:
        from google.cloud import storage
    except ImportError as exc:
        raise ImportError("a gs:// run directory needs google-cloud-storage (in requirements.txt and "
                          "cluster/requirements-gpu.txt; or pip install 'toolformer[gcs]')") from exc
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="toolformer-emulator", credentials=AnonymousCredentials())
    return storage.Client()


class GCSConditional(VersionedConditional):
    """GCS preconditions: ``if_generation_match=0`` to create, ``=<generation>`` to replace or delete."""

    def _blob(self, name: str):
        if "client" not in _gcs_clients:
            _gcs_clients["client"] = gcs_client()
        bucket, key = self.store.path(name).split("/", 1)
        return _gcs_clients["client"].bucket(bucket).blob(key)

    def _get(self, name: str) -> tuple[bytes, Any] | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self._blob(name)
        for _ in range(UPDATE_TRIES):  # the bytes of the generation read: replaced between the two calls, read again
            try:
                blob.reload(**_gcs_bounds())
                return blob.download_as_bytes(if_generation_match=blob.generation, **_gcs_bounds()), blob.generation
            except NotFound:
                return None
            except PreconditionFailed:
                continue
        raise UpdateConflict(f"{self.store.path(name)}: replaced {UPDATE_TRIES} times while being read")

    def _put(self, name: str, data: bytes, version: Any) -> bool:
        from google.api_core.exceptions import Conflict, NotFound, PreconditionFailed

        try:
            self._blob(name).upload_from_string(data, if_generation_match=0 if version is None else int(version),
                                                **_gcs_bounds())
            return True
        except (PreconditionFailed, NotFound):
            return False
        except Conflict as exc:
            raise WriteConflict(str(exc)) from None

    def _remove(self, name: str, version: Any) -> bool:
        from google.api_core.exceptions import Conflict, NotFound, PreconditionFailed

        try:
            self._blob(name).delete(if_generation_match=version, **_gcs_bounds())
            return True
        except (PreconditionFailed, NotFound):
            return False
        except Conflict as exc:
            raise WriteConflict(str(exc)) from None
