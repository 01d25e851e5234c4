"""The differential oracle (issue 14): see docs/oracle.md and run.py."""
