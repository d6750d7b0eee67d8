import sys

from bloomlink.cli import main

sys.exit(main())
