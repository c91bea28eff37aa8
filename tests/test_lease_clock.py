"""The lease deadline's clock (issue 34): it keeps counting while the machine is suspended, so a driver whose VM
slept past its TTL stops writing at its next check, as every other driver's wall clock says it must."""

from __future__ import annotations

import sys
import time

import pytest

from toolformer.run import lease as lease_mod
from toolformer.run.lease import Lease, LeaseLost, deadline_clock
from toolformer.run.store import Store


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CLOCK_BOOTTIME is Linux's")
def test_the_deadline_clock_is_boottime_on_linux():
    a = time.clock_gettime(time.CLOCK_BOOTTIME)
    b = deadline_clock()
    c = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert a <= b <= c


def test_a_driver_whose_clock_skipped_a_suspend_past_its_ttl_stops_writing(tmp_path, monkeypatch):
    held = Lease(Store(tmp_path), ttl_s=30.0, heartbeat_s=10.0, log=lambda m: None).acquire()
    try:
        held.check()  # fresh: may write
        slept = deadline_clock() + 31.0  # the VM was suspended for longer than the TTL
        monkeypatch.setattr(lease_mod, "deadline_clock", lambda: slept)
        with pytest.raises(LeaseLost, match="not renewed for"):
            held.check()
    finally:
        held.release()
