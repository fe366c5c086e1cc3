"""``python -m bench [names...] [--suite headline] [--quick]``: see bench/run.py."""
import signal
import sys

from .run import main

# SIGTERM (a CI timeout, an operator) exits through run_one's ``finally``, which stops
# the benchmark process, which stops the clusters it started.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
sys.exit(main())
