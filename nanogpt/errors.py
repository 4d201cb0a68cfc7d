"""
The mistakes a user can make and fix (a path, a config value, mismatched data), and how every
script reports them: one line on stderr and a non-zero exit status, no traceback. Bugs still raise.
"""

import sys


class UserError(Exception):
    """A mistake the user can fix, reported in one line."""
    exit_code = 1


class ConfigError(UserError):
    exit_code = 2  # like argparse, usage errors exit with 2


def run(main, *args):
    """Call main(*args); a UserError ends the program with its message on one line, and so does Ctrl-C."""
    try:
        return main(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
