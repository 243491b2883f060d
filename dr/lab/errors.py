"""The lab's one error: what could not be set up or torn down, and how to fix it (one line)."""

from __future__ import annotations

from dr.errors import EXIT_UNREADABLE, DrError


class LabError(DrError):
    """`dr lab` cannot do what was asked: not root, a tool missing (the message names the Debian
    package), a step of `up` failed (the message names the step and its log), or no lab is up."""

    exit_code = EXIT_UNREADABLE
