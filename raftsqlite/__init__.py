"""raftsqlite: SQLite replicated with Raft and sharded across Raft groups."""

__version__ = "0.1.0"
