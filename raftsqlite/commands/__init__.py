"""Subcommands of ``raft-sqlite``: ``raft-sqlite NAME ...`` runs ``NAME.main(argv)``."""
