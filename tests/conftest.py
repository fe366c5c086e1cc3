import os

# Tests run against the source tree (editable install) or an installed wheel.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
