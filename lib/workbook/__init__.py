"""The workbook package: everything the experiment notebooks call.

Notebooks narrate; this package does the work, so that it can be unit-tested and reused across
notebooks.  Importing it is cheap (torch is imported lazily by the modules that need it).
"""
import sys
import warnings

# jsonschema (under nbformat, papermill, plotly's notebook renderer) imports rfc3987_syntax when it is
# installed, which builds some thirty Earley parsers at import: a second or two of CPU in every kernel,
# runner and report process. It serves only the "iri" formats, which no notebook schema uses; marked
# absent, jsonschema skips those two format checks. Set before anything imports jsonschema.
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)

from workbook.errors import ParameterError, WorkbookError

# tqdm.auto (imported by model libraries) warns in kernels without ipywidgets; progress goes to text
# bars here.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

__all__ = ["ParameterError", "WorkbookError", "__version__"]
