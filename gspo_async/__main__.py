import sys

from gspo_async.cli import main

sys.exit(main())
