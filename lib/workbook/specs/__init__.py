"""Each notebook's parameters, declared once (see :mod:`workbook.spec`); these modules import nothing heavy."""
