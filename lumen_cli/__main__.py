import sys

from lumen_cli import main

sys.exit(main())
