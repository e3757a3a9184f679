"""The `ember` command (the package's console script)."""

import sys

from . import _ember


def main():
    """Runs the `ember` command line with this process's arguments; returns its exit code."""
    _ember.serve_role()
    return _ember.cli_main(sys.argv)
