"""Sharding: keyspace, catalog, shard ownership, query planning, merging and routing.
See docs/design/sharding.md."""
