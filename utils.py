"""Shared helpers: the user-error type, metrics, checkpoints, logging and plots."""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad path, bad file, bad flag).

    main.py prints the message as a single line on stderr and exits with code 2; the
    message names the file or flag at fault and says how to fix it.
    """
