import sys

from roberta_jax.cli import main

sys.exit(main())
