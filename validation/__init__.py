"""Validation scripts: one per table / figure of the paper, plus the Fashion-MNIST sweep of every rule.

Run one as ``python -m validation.<script> ...`` (e.g. ``python -m validation.table1_smallconv --quick``);
``validation._sweep`` is the shared driver.  See validation/README.md.
"""
