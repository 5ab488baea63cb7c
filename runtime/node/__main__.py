"""``python -m deft.runtime.node --config FILE``: the same as ``deft-node``."""

import sys

from deft.runtime.node.main import main

sys.exit(main())
