"""``raft-sqlite rebalance TABLE [--dry-run] [--wait] [--remove-shard S] [--host ADDR]
[-u USER:PASS] [-c CA] [-d CLIENT_CERT -k CLIENT_KEY] [-i]``."""
from raftsqlite.sharding.rebalance_cli import main  # noqa: F401
