"""``raft-sqlite demo``: a default group and two shard groups on this machine."""
from raftsqlite.sharding.local import demo


def main(argv):
    return demo(argv)
