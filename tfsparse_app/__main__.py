"""`python -m tfsparse_app`: the `tfsparse` command."""

import sys

from tfsparse_app.cli import main

sys.exit(main())
