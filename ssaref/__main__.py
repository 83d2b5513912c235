"""``python -m ssaref`` is ``python -m ssaref.train``."""

import sys

from .train import main

sys.exit(main())
