"""`kitrading up`: the mesh on one machine as supervised processes (see supervisor.py)."""
