"""``raft-sqlite <name> ...`` subcommands: ``raftsqlite.commands.<name>.main(argv)``."""
