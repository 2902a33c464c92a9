import sys

from churn_platform.cli import main

sys.exit(main())
