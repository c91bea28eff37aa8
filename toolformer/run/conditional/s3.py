"""S3 through boto3: conditional writes (``If-None-Match``, ``If-Match``) on a bounded client, and what its
answers mean (refused, a conflict, the store's own failure)."""

from __future__ import annotations

import os
from typing import Any

from toolformer.run.conditional.base import (CONNECT_TIMEOUT_S, MAX_ATTEMPTS, READ_TIMEOUT_S, StoreUnavailable,
                                         VersionedConditional, WriteConflict)

_s3_clients: dict = {}


def s3_client():
    """One boto3 client per process and endpoint (``AWS_ENDPOINT_URL`` points it at another S3 API: a test's),
    bounded: ``CONNECT_TIMEOUT_S``, ``READ_TIMEOUT_S`` and ``MAX_ATTEMPTS`` sends in all (botocore's defaults are
    60 s, 60 s and 3 or 5 sends: a write could land minutes after its fence check)."""
    import boto3  # pyarrow's S3 filesystem has no conditional put
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint not in _s3_clients:
        _s3_clients[endpoint] = boto3.client("s3", config=Config(
            connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}))
    return _s3_clients[endpoint]


class S3Conditional(VersionedConditional):
    """S3 conditional writes: create with ``If-None-Match: *``, replace and delete with ``If-Match: <ETag>``
    (S3 added them in 2024; an older botocore has no such PutObject parameters: the pinned one does, see
    requirements.txt and cluster/requirements-gpu.txt)."""

    _FAILED = ("PreconditionFailed", "NoSuchKey", "412")
    _CONFLICT = ("ConditionalRequestConflict", "409")  # another conditional write of the key in flight

    def _key(self, name: str) -> tuple[str, str]:
        bucket, key = self.store.path(name).split("/", 1)
        return bucket, key

    @staticmethod
    def _unavailable(exc: Exception) -> StoreUnavailable | None:
        """The store's own failure to answer (after the client's resends), as ``StoreUnavailable``."""
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        if isinstance(exc, (ConnectionError, HTTPClientError)):  # timeouts, refused or dropped connections
            return StoreUnavailable(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") == "SlowDown":
                return StoreUnavailable(f"{status}: {exc}")
        return None

    def _send(self, call, **kwargs) -> bool:
        """True when the conditional request went through, False when its precondition did not hold."""
        from botocore.exceptions import ClientError

        try:
            call(**kwargs)
            return True
        except Exception as exc:  # noqa: BLE001 - sorted below: refused, conflict, the store's failure, or raised
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
            if code in self._FAILED:
                return False
            if code in self._CONFLICT:
                raise WriteConflict(f"{code}: {exc}") from None
            down = self._unavailable(exc)
            if down is not None:
                raise down from exc
            raise

    def _get(self, name: str) -> tuple[bytes, Any] | None:
        from botocore.exceptions import ClientError

        bucket, key = self._key(name)
        try:
            obj = s3_client().get_object(Bucket=bucket, Key=key)
            return obj["Body"].read(), obj["ETag"]
        except Exception as exc:  # noqa: BLE001 - absent, the store's failure, or raised
            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            down = self._unavailable(exc)
            if down is not None:
                raise down from exc
            raise

    def _put(self, name: str, data: bytes, version: Any) -> bool:
        bucket, key = self._key(name)
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        return self._send(s3_client().put_object, Bucket=bucket, Key=key, Body=data, **cond)

    def _remove(self, name: str, version: Any) -> bool:
        bucket, key = self._key(name)
        return self._send(s3_client().delete_object, Bucket=bucket, Key=key, IfMatch=version or "*")
