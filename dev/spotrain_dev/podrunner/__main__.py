"""``python -m spotrain_dev.podrunner``: the pod runner's CLI, and the shim (``--shim -- argv``)."""

import sys

from spotrain_dev.podrunner.runner import main

sys.exit(main())
