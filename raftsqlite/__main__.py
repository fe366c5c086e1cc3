import sys

from raftsqlite.cli import main

sys.exit(main())
