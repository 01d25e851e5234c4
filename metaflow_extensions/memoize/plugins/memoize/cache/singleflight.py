"""Single flight (``@memoize(lock=True)``): one task computes a key, the others wait.

A lease is a small object at ``v1/locks/<Flow>/<step>/<key>`` created with
put-if-absent. Its holder renews it from a background thread; a holder that
dies stops renewing, so its lease expires and a waiter takes over. Waiters poll
for the entry and use it as soon as it is published.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Callable

from ..exceptions import CacheFault
from .entries import Cache


class Lease:
    def __init__(self, cache: Cache, flow: str, step: str, key: str, duration: float):
        self.cache = cache
        self.name = cache.lock_key(flow, step, key)
        self.duration = duration
        self.owner = "%s:%d:%s" % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8])
        self._stop = threading.Event()
        self._thread = None

    def _payload(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "expires": self.cache.clock() + self.duration}
        ).encode()

    def _current(self):
        data = self.cache.store.get(self.name)
        if data is None:
            return None
        try:
            return json.loads(data.decode())
        except ValueError:
            return {"owner": "?", "expires": 0}

    def try_acquire(self) -> bool:
        if self.cache.store.put_if_absent(self.name, self._payload()):
            self._start_renewing()
            return True
        held = self._current()
        if held is not None and held.get("owner") == self.owner:
            # our own conditional PUT, whose reply was lost: its retry got 412
            self._start_renewing()
            return True
        if held is not None and (
            held.get("expires", 0) < self.cache.clock() or self._unrenewed(held)
        ):
            # the holder stopped renewing (crashed): break its lease, then race for it
            self.cache.store.delete([self.name])
            if self.cache.store.put_if_absent(self.name, self._payload()):
                self._start_renewing()
                return True
        return False

    def _unrenewed(self, held) -> bool:
        """True once the same lease document has been seen unchanged for two of our
        lease periods: a live holder rewrites it every third of a period, so a
        document that never changes belongs to a dead holder, whatever its
        `expires` claims (a skewed clock, a huge lease, a planted object)."""
        now = self.cache.clock()
        seen = getattr(self, "_seen", None)
        if seen is None or seen[0] != held:
            self._seen = (held, now)
            return False
        return now - seen[1] > 2 * self.duration

    def _start_renewing(self):
        def renew():
            while not self._stop.wait(self.duration / 3.0):
                try:
                    held = self._current()
                    if held is None or held.get("owner") != self.owner:
                        return  # lost it; the entry write is still safe (put-if-absent)
                    self.cache.store.put(self.name, self._payload())
                except CacheFault:
                    pass

        self._thread = threading.Thread(target=renew, name="memoize-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # a renewal in flight would re-create the lease after our delete
            self._thread.join(timeout=30)
        try:
            held = self._current()
            if held is not None and held.get("owner") == self.owner:
                self.cache.store.delete([self.name])
        except CacheFault:
            pass

    def wait(self, entry_ready: Callable[[], bool], poll: float = 1.0) -> str:
        """Wait until the entry exists ("ready") or this task holds the lease ("acquired")."""
        while True:
            if entry_ready():
                return "ready"
            if self.try_acquire():
                # the previous holder may have published just before releasing
                return "ready" if entry_ready() else "acquired"
            time.sleep(poll)
