"""``python -m fid_metric``: the ``fid-metric`` command (see ``fid_metric.cli``)."""

import sys

from fid_metric.cli import main

if __name__ == "__main__":
    sys.exit(main())
