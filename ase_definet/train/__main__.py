"""``python -m ase_definet.train ...`` = ``definet train ...`` (handy under torchrun)."""

import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
