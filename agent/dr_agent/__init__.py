"""The replication data path of dr: capture agent, process server and master target.

Installable on its own (`pip install ./agent`) so a production server gets only what it needs.
"""

__version__ = "0.1.0"
