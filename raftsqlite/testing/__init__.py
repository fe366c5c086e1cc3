"""Fault-injection testing of real raftsqlite clusters (issue #8).

- :mod:`.history`  operations recorded with invoke/complete times and outcomes
- :mod:`.checkers` bank, linearizability, append and convergence checkers
- :mod:`.proxy`    an asyncio TCP fault proxy in front of every member's Raft port
- :mod:`.cluster`  ``LocalCluster``: real processes on 127.0.0.1, kill/pause/partition
- :mod:`.workloads` bank, register and append clients
- :mod:`.nemesis`  fault schedules and the long-run CLI
"""
