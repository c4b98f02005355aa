"""``python -m ocean_lib``: see :mod:`ocean_lib.cli.main`."""

import sys

from ocean_lib.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
