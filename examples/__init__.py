"""Runnable example flows. ``examples.pizza`` uses every action of the contract."""
