import sys

from growformer.cli import main

sys.exit(main())
