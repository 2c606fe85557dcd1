"""The settle spool: settles that could not reach Redis, kept on local disk until they can.

Metering must not depend on Redis answering at the moment a request ends. A settle that fails
with a Redis error is appended to this replica's spool file as one JSON line and fsync'd before
the request's handler returns, so a served request is on disk even if the process dies next.
When Redis answers again (and at start-up, and on every maintenance tick) the spool is replayed
in order through the same settle.lua, which is idempotent: the request id's done marker stops a
second metering, and the in-flight record stops a second refund of the reservation.

Files: `<spool_dir>/spool-<replica id>.jsonl`, held under an exclusive flock while its replica
lives. A replay first rotates the live file to `*.replaying` (new settles go to a fresh file),
then replays every file in the folder whose lock it can take: its own rotated file, and any file
a dead replica left behind. Lines that replayed are gone when the file is deleted; if Redis
fails again half way, the rest are written back and fsync'd for the next try.

What can still be lost: a settle of a process killed between its failed Redis call and the
fsync (microseconds), and what the disk itself loses (a host lost with its disk).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

from redis.exceptions import RedisError

from gateway.ratelimit import SettleRecord

log = logging.getLogger("gateway.spool")


def _try_lock(f: IO[bytes]) -> bool:
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SettleSpool:
    """One replica's append-only, fsync'd spool of settles, and the replay of all spools in its folder."""

    def __init__(self, directory: Path, replica_id: str) -> None:
        self.directory = directory
        self.replica_id = replica_id
        self.path = directory / f"spool-{replica_id}.jsonl"
        self._file: IO[bytes] | None = None
        self.appended = 0
        self.replayed = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            f = self.path.open("ab")
            if not _try_lock(f):  # pragma: no cover - replica ids are random
                raise RuntimeError(f"spool file {self.path} is locked by another process")
            self._file = f
        return self._file

    def append(self, rec: SettleRecord) -> None:
        """Write one settle and fsync it (blocking, ~1 ms on a local disk; only during an outage)."""
        f = self._open()
        f.write(json.dumps(dataclasses.asdict(rec), separators=(",", ":")).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
        self.appended += 1

    def has_work(self) -> bool:
        if self.appended:
            return True
        try:
            return any(p.stat().st_size > 0 for p in self.directory.iterdir() if p.is_file())
        except FileNotFoundError:
            return False

    def _rotate(self) -> None:
        """Move the live file aside so that settles arriving during the replay go to a new one."""
        if self._file is None or self.appended == 0:
            return
        target = self.directory / f"spool-{self.replica_id}.{time.time_ns()}.replaying"
        os.rename(self.path, target)
        old, self._file = self._file, None
        self.appended = 0
        old.close()  # releases the lock on the rotated file: the replay takes it again

    async def replay(self, settle: Callable[[SettleRecord], Awaitable[object]]) -> int:
        """Replay every unlocked spool file in the folder; returns the number of settles replayed.

        Stops at the first Redis error (the rest stay on disk); raises nothing.
        """
        self._rotate()
        done = 0
        try:
            files = sorted(p for p in self.directory.iterdir() if p.is_file())
        except FileNotFoundError:
            return 0
        for path in files:
            if path == self.path:
                continue
            with path.open("r+b") as f:
                if not _try_lock(f):
                    continue  # a live replica's own spool
                lines = [line for line in f.read().splitlines() if line.strip()]
                for i, line in enumerate(lines):
                    try:
                        rec = SettleRecord(**json.loads(line))
                    except (ValueError, TypeError):
                        log.error("Unreadable spool line skipped: file=%s line=%d", path.name, i + 1)
                        continue
                    try:
                        await settle(rec)
                    except RedisError as exc:
                        rest = b"\n".join(lines[i:]) + b"\n"
                        f.seek(0)
                        f.truncate()
                        f.write(rest)
                        f.flush()
                        os.fsync(f.fileno())
                        log.warning(
                            "Spool replay paused, Redis failed again: replayed=%d left=%d error=%s",
                            done,
                            len(lines) - i,
                            exc,
                        )
                        self.replayed += done
                        return done
                    done += 1
                path.unlink()
        if done:
            log.warning("Spooled settles replayed into Redis: count=%d", done)
        self.replayed += done
        return done

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
