import sys

from daemon115.cli import main

sys.exit(main())
