"""``python -m eventkit.shop.demo``: run the demo and exit with its result."""

import sys

from eventkit.shop.demo.main import main

sys.exit(main())
