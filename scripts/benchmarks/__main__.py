"""python -m eventkit.benchmarks"""

import sys

from eventkit.benchmarks import main

sys.exit(main())
