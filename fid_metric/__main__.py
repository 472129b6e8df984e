"""``python -m fid_metric``: the ``fid-metric`` command (see ``fid_metric._cli.main``)."""

import sys

from fid_metric._cli.main import main

if __name__ == "__main__":
    sys.exit(main())
