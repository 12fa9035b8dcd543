"""``python -m bbctl.directives``: refresh or check the Lua validator's grammar, validate job scripts."""

import sys

from bbctl.directives.lua import main

sys.exit(main())
