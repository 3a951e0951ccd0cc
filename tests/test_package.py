"""Importing ``workbook`` first keeps jsonschema from building rfc3987_syntax's parsers in every kernel,
runner and report process, and notebooks still validate."""
import subprocess
import sys

from workbook.paths import repo_root


def test_jsonschema_skips_only_the_iri_formats_and_notebooks_still_validate():
    code = (
        "import sys, workbook, nbformat, jsonschema, papermill\n"
        "from workbook import plots\n"
        "plots.setup()\n"
        "assert sys.modules.get('rfc3987_syntax') is None, 'rfc3987_syntax was imported'\n"
        "nbformat.validate(nbformat.read('notebooks/pos_interp.ipynb', as_version=4))\n"
        "checks = set(jsonschema.Draft7Validator.FORMAT_CHECKER.checkers)\n"
        "assert 'iri' not in checks and {'uri', 'email', 'date-time'} <= checks, sorted(checks)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=repo_root(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
