"""The workbook package: everything the experiment notebooks call.

Notebooks narrate; this package does the work, so that it can be unit-tested and reused across
notebooks.  Importing it is cheap (torch is imported lazily by the modules that need it).
"""
import warnings

from workbook.errors import ParameterError, WorkbookError

# tqdm.auto (imported by model libraries) warns in kernels without ipywidgets; progress goes to text
# bars here.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

__all__ = ["ParameterError", "WorkbookError", "__version__"]
