"""The privacy worker: claims deletion requests and advances them (`headwater up` runs one as a child)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from headwater.core import metrics
from headwater.core.erasure import open_board
from headwater.core.settings import Settings
from headwater.privacy.deleter import Deleter
from headwater.privacy.requests import COMPLETED, FAILED, PENDING, Deletion, DeletionStore

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


class PrivacyWorker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = DeletionStore(open_board(settings.effective_catalog_uri))
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._deleter: Deleter | None = None
        self._purged = 0.0

    @property
    def deleter(self) -> Deleter:
        if self._deleter is None:
            self._deleter = Deleter(self.settings, self.store)
        return self._deleter

    def step(self) -> Deletion | None:
        """Advance the next due request, if any; return it."""
        request = self.store.claim(self.holder)
        if request is None:
            return None
        try:
            self.deleter.advance(request)
        except Exception as exc:
            attempts = int(request.progress.get("attempts", 0)) + 1
            request.progress["attempts"] = attempts
            log.exception("deletion %s failed (attempt %d of %d)", request.id, attempts, MAX_ATTEMPTS)
            error = f"{type(exc).__name__}: {exc}"
            if attempts >= MAX_ATTEMPTS:
                if "seq" in request.progress:  # a failed request must not hold back later erasures
                    self.deleter.board.close(int(request.progress["seq"]))
                self.store.fail(request, error, self.deleter.salt)
                self.deleter.audit(request, "privacy.deletion_failed", {"error": error[:500]})
                metrics.PRIVACY_DELETIONS.labels("failed").inc()
            else:  # retried from the step it stood at, after a back-off (a database restart, a busy table)
                retry_at = int((time.time() + min(300, 5 * 2**attempts)) * 1000)
                self.store.save(request, PENDING, error=error, holder="", due_ms=retry_at)
        return request

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        while not stop.is_set():
            request = self.step()
            if request is None:
                if time.monotonic() - self._purged > 3600:
                    self._purged = time.monotonic()
                    self.deleter.suppressor.purge()
                stop.wait(poll_s)

    def until_done(self, request_id: str, timeout_s: float | None = None, poll_s: float = 0.5) -> Deletion:
        """Advance requests in this process until `request_id` has completed or failed (CLI `--wait`, tests)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            found = self.store.get(request_id)
            if found is None:
                raise KeyError(request_id)
            if found.state in (COMPLETED, FAILED):
                return found
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"deletion {request_id} is still {found.state} ({found.progress.get('step')})")
            if self.step() is None:
                time.sleep(poll_s)

    def close(self) -> None:
        self.store.engine.dispose()
