"""Runnable examples: ``tutorial`` (a first flow) and ``chat`` (a frontend).

The pizza bot that ``cloudbunch demo`` plays ships with the product: ``router/demo_flow.py``.
"""
