"""`python -m preim3d.training [options]` = `preim3d train [options]`, handy under torchrun."""

import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
