"""Every node's cached copy of the catalog (the router's ``CatalogSource``).

The default group's members hold the catalog in their FSM; every other node keeps a copy
here and learns changes by long-poll: ``poll_forever`` asks ``fetch(after_version,
timeout)`` for a catalog newer than the one it has, and the serving side answers as soon
as one exists (``wait_newer``) or when the timeout passes. A shard saying ``Moved`` makes
the router call ``refresh`` at once. The transport (HTTP) is the integrator's: this module
only needs an async ``fetch`` that returns catalog bytes (or None for "no change").
"""
import asyncio
import logging

from raftsqlite import errors
from raftsqlite.sharding.catalog import Catalog

log = logging.getLogger(__name__)


class CatalogCache:
    def __init__(self, fetch=None, catalog=None):
        self._fetch = fetch            # async (after_version, timeout) -> bytes | None
        self._cat = catalog or Catalog()
        self._changed = asyncio.Condition()
        self.refreshes = 0
        self.errors = 0
        self._refreshing = None

    # ---- CatalogSource ------------------------------------------------------------------
    def current(self):
        return self._cat

    async def refresh(self):
        """Fetch the newest catalog now. Concurrent callers share one fetch."""
        if self._fetch is None:
            return self._cat
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._do_refresh())
        fut = self._refreshing
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._refreshing is fut:
                self._refreshing = None

    # What a failed fetch may fall back on: the catalog's holders cannot answer now. (A
    # fetch is a read, so OutcomeUnknown too: whether it arrived does not matter.)
    UNREACHABLE = (errors.NotLeader, errors.LeaderNotFound, errors.Unavailable,
                   errors.Timeout, errors.OutcomeUnknown)

    async def view(self):
        """``(catalog, None)`` with the newest catalog; or, when the default group cannot
        be reached (no leader, members down), ``(cached copy, reason)``, so an operator's
        view (``/tables``, ``/shards``) still answers during that outage, marked stale. A
        cache that never held a catalog has nothing to show and raises the error."""
        try:
            return await self.refresh(), None
        except self.UNREACHABLE as e:
            if not self._cat.version:
                raise
            return self._cat, f"the default group could not be reached ({e})"

    async def _do_refresh(self):
        self.refreshes += 1
        b = await self._fetch(-1, 0)
        if b:
            await self.publish(b)
        return self._cat

    # ---- updates ------------------------------------------------------------------------
    async def publish(self, catalog_or_bytes):
        """Install a catalog if it is newer (local FSM apply, or a fetched copy)."""
        c = catalog_or_bytes if isinstance(catalog_or_bytes, Catalog) else Catalog.from_bytes(catalog_or_bytes)
        if c.version <= self._cat.version and self._cat.version:
            return False
        self._cat = c
        async with self._changed:
            self._changed.notify_all()
        return True

    async def wait_newer(self, version, timeout):
        """Serving side of the long-poll: the catalog once its version exceeds
        ``version``, or None after ``timeout`` seconds."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._cat.version > version), timeout)
            except asyncio.TimeoutError:
                return None
        return self._cat

    async def poll_forever(self, timeout=0.5, backoff=0.5):
        """Follow the catalog; runs until cancelled. With a long-poll ``timeout`` of
        0.5 s a change reaches every router well within a second."""
        while True:
            try:
                b = await self._fetch(self._cat.version, timeout)
                if b:
                    await self.publish(b)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the default group may be electing: keep trying
                self.errors += 1
                log.debug("catalog poll failed: %s", e)
                await asyncio.sleep(backoff)

    def stats(self):
        return {"version": self._cat.version, "epoch": self._cat.epoch,
                "refreshes": self.refreshes, "errors": self.errors}
