"""Errors a rerun would heal (issue 43 item 4): a store that answered 5xx or not at all, a Ray RPC that failed, a
connection reset. One that escapes an annotate pass costs that pass (an idle pass of
``ray.max_passes_without_progress``), not the run; anything else still stops it (exit 1: a human looks)."""

from __future__ import annotations

import errno

# Ray's own words for a control plane that did not answer this time (ray.exceptions), matched by name: an older or
# newer Ray keeps the check importable.
RAY_TRANSIENT = ("RpcError", "GetTimeoutError", "RaySystemError", "ObjectLostError", "OwnerDiedError",
                 "ObjectFetchTimedOutError", "ActorUnavailableError", "GcsClientError")
BOTO_TRANSIENT = ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError")
NET_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
              errno.EHOSTUNREACH, errno.ENETUNREACH}


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return getattr(exc, "code", None) if isinstance(getattr(exc, "code", None), int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is one a rerun would heal."""
    from toolformer.run.conditional import StoreFault

    seen = 0
    while exc is not None and seen < 8:
        name = type(exc).__name__
        if isinstance(exc, StoreFault) or name in RAY_TRANSIENT or name in BOTO_TRANSIENT:
            return True
        status = _status(exc)
        if status is not None and (status >= 500 or status == 429):
            return True
        if isinstance(exc, (ConnectionError, TimeoutError)) or getattr(exc, "errno", None) in NET_ERRNOS:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
