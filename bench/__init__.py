"""raftsqlite's load-testing suite: ``python -m bench`` (see docs/design/bench.md)."""
