"""`python -m ember`: serves a worker agent's or executor's role when started as one
(Ember starts them so), else runs the `ember` command line."""

import sys

from . import _ember

_ember.serve_role()

from ._cli import main  # noqa: E402

sys.exit(main())
