"""Entry point of secure_fed: ``python run_secure.py [train|simulate|budget] ...``.

With no arguments it trains FedHPro on the embedded digits dataset with the defaults.
"""

from __future__ import annotations

import sys

from secure_fed.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
