"""Runnable examples: ``pizza`` (a flow that uses every action) and ``chat`` (a frontend)."""
