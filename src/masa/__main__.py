"""`python -m masa`, which is how torchrun starts the CLI: `torchrun --nproc-per-node N -m masa train ...`."""

import sys

from masa.cli import main

sys.exit(main())
