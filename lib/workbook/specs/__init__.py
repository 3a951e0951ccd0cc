"""Each notebook's parameters, declared once (see :mod:`workbook.spec`).

These modules import nothing heavy, so the CLI and the runner read them without starting torch.
"""
