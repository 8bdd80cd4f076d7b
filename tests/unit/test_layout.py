"""The README's layout names every module of the two services and of `shared/`, and no other:
a module added, moved or removed shows here until the README says so.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services/api", "services/responder", "shared", "shared/store")


def listed_in_readme() -> dict[str, set[str]]:
    """The modules the layout lists under each package's heading (`  - \\`shared/\\`, ...`)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("- **Layout.**") : readme.index("  - The rest:")]
    listed: dict[str, set[str]] = {}
    package = None
    for line in section.splitlines():
        if heading := re.match(r"  - `([\w/]+)/`", line):
            package = heading[1]
            listed[package] = set()
        elif package is not None:
            listed[package] |= set(re.findall(r"`(\w+\.py)`", line))
    return listed


def test_the_readme_layout_lists_every_module_of_the_services_and_shared() -> None:
    modules = {
        package: {path.name for path in (ROOT / package).glob("*.py") if path.name != "__init__.py"}
        for package in PACKAGES
    }
    assert listed_in_readme() == modules
