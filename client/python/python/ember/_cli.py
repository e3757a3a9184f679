"""The `ember` command (the package's console script)."""

import signal
import sys

from . import _ember


def main():
    """Runs the `ember` command line with this process's arguments; returns its exit code.

    SIGINT gets its default action back first, as in the Rust `ember` binary: a command that
    handles Ctrl-C (`ember up`, `ember head`, `ember worker`) installs its own handler and
    stops cleanly, any other ends at once. Python's handler would otherwise also see the
    signal and raise KeyboardInterrupt once the command has returned."""
    _ember.serve_role()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return _ember.cli_main(sys.argv)
