"""Package discovery under the ``segdrop`` mapping (pyproject.toml holds everything else).

The repository root is the ``segdrop`` package (``package-dir = {"segdrop" = "."}``), which setuptools' own
``find`` cannot map, so every folder with an ``__init__.py`` below the root, except the tests, becomes
``segdrop.<folder>``: a new subpackage is never silently missing from wheels.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

SUBPACKAGES = find_packages(".", exclude=["tests", "tests.*", "build", "build.*"])


class BuildPyWithoutSetup(build_py):
    """The root package is this folder: keep ``setup.py`` itself out of it."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [entry for entry in modules if not (package == "segdrop" and entry[1] == "setup")]


setup(
    packages=["segdrop", *(f"segdrop.{name}" for name in SUBPACKAGES)],
    cmdclass={"build_py": BuildPyWithoutSetup},
)
