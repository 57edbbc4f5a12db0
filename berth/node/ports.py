"""Engine ports: one reservation per instance, from BERTH_PORT_RANGE, in a node-local SQLite registry.

The registry survives restarts and is safe for concurrent workers (one IMMEDIATE transaction per
allocation). A port is only handed out when nothing else holds it: checked by binding it.
"""

import socket
import sqlite3
import time
from pathlib import Path

from temporalio.exceptions import ApplicationError

from berth.settings import Settings


class PortRegistry:
    def __init__(self, db_path: Path, port_range: tuple[int, int]):
        self.db_path = db_path
        self.low, self.high = port_range
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS reservations ("
                " port INTEGER PRIMARY KEY, instance_id TEXT UNIQUE NOT NULL, reserved_at REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def allocate(self, instance_id: str) -> int:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT port FROM reservations WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row:
                db.execute("COMMIT")
                return row[0]
            taken = {port for (port,) in db.execute("SELECT port FROM reservations")}
            for port in range(self.low, self.high + 1):
                if port not in taken and port_is_free(port):
                    db.execute(
                        "INSERT INTO reservations (port, instance_id, reserved_at) VALUES (?, ?, ?)",
                        (port, instance_id, time.time()),
                    )
                    db.execute("COMMIT")
                    return port
            db.execute("ROLLBACK")
        finally:
            db.close()
        raise ApplicationError(
            f"no free port left in {self.low}-{self.high}: stop a deployment or widen BERTH_PORT_RANGE",
            type="NO_FREE_PORT",
        )

    def release(self, instance_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM reservations WHERE instance_id = ?", (instance_id,))

    def reserved(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT instance_id, port FROM reservations").fetchall())


def port_is_free(port: int) -> bool:
    """Nothing listens on it. SO_REUSEADDR as the engines use it: connections of an engine that
    just stopped, still in TIME_WAIT, do not keep the next engine from binding the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def registry(settings: Settings) -> PortRegistry:
    return PortRegistry(settings.home / "ports.sqlite", settings.port_range)
