import sys

from softprompt.cli.main import main

sys.exit(main())
