"""Set-up files agree with each other: environment.yml and pyproject.toml name the same
dependencies, and the README's commands are the ones the Makefile and CI provide."""
import re
import tomllib

import yaml

from workbook.paths import repo_root

ROOT = repo_root()


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(proj["dependencies"])
    for extra in ("test", "triton", "ray"):
        wanted += proj["optional-dependencies"][extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pip = [p for p in pip if not p.startswith("-e")]
    assert sorted(map(_name, pip)) == sorted(map(_name, wanted))
    assert {_name(p): p for p in pip} == {_name(w): w for w in wanted}  # same version bounds too


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    make = (ROOT / "Makefile").read_text()
    for target in ("run", "test", "lab"):
        assert re.search(rf"^{target}:", make, re.M), target
    assert "make test" in readme and "make lab" in readme and "\nmake\n" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
