"""``raft-sqlite rebalance TABLE [--dry-run] [--wait] [--remove-shard S] [--host ADDR]``."""
from raftsqlite.sharding.rebalance_cli import main  # noqa: F401
