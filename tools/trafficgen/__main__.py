"""``python -m deft.tools.trafficgen``: the same as the deft-trafficgen command."""

import sys

from deft.tools.trafficgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
