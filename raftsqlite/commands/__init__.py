"""Subcommands of ``raft-sqlite``: ``raft-sqlite NAME ...`` runs ``raftsqlite.commands.NAME.main(argv)``."""
