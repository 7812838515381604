"""The house's rules that lint-imports and ruff do not check: short modules, and a README map that is true."""

from __future__ import annotations

import re
from pathlib import Path

import avatar_cam

PACKAGE = Path(avatar_cam.__file__).parent
README = PACKAGE.parent / "README.md"
MAX_LINES = 400  # a module longer than this probably holds two concerns


def test_no_module_is_longer_than_a_concern_needs():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concern (over {MAX_LINES} lines): {long}"


def test_every_module_says_what_it_is_for():
    bare = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
            if p.name != "__main__.py" and not p.read_text(encoding="utf-8").lstrip().startswith('"""')]
    assert not bare, f"these modules have no docstring naming their concern: {bare}"


def test_the_readme_architecture_names_every_room():
    section = README.read_text(encoding="utf-8").split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rooms = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    missing = [room for room in rooms if not re.search(rf"\b{room}/", section)]
    assert not missing, f"README.md's Architecture section does not show these rooms: {missing}"
