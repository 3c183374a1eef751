"""A small persistent store of numbers by key: each candidate is measured (or timed) only once.

Backed by one SQLite table in the run directory, so an interrupted search keeps what it measured and
several processes on one machine may share it; without a path it lives in memory.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path


class Cache:
    """Floats by string key in table `table` of the SQLite file `path` (in memory when `path` is None)."""

    def __init__(self, path: Path | str | None, table: str):
        self.table, self.memory = table, {}
        self.db = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=60)
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value REAL NOT NULL)")
            self.db.commit()

    def get(self, key: str) -> float | None:
        if key not in self.memory and self.db is not None:
            row = self.db.execute(f"SELECT value FROM {self.table} WHERE key = ?", (key,)).fetchone()
            if row is not None:
                self.memory[key] = row[0]
        return self.memory.get(key)

    def put(self, key: str, value: float) -> None:
        self.memory[key] = value
        if self.db is not None:
            self.db.execute(f"INSERT OR REPLACE INTO {self.table} (key, value) VALUES (?, ?)", (key, value))
            self.db.commit()
