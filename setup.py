"""Package discovery for the three source roots (everything else is in pyproject.toml).

``surgery/``, ``exporters/`` and ``finetune/`` are installed as ``surgery``, ``surgery.exporters`` and
``surgery.finetune``: every folder with an ``__init__.py`` under them is a package, found here, so a new
subpackage (``exporters/onnx/``) is in the wheel without anyone editing a list. tests/test_packaging.py builds
the wheel and checks that every tracked ``.py`` file is in it.
"""

from setuptools import find_packages, setup

ROOTS = {"surgery": "surgery", "surgery.exporters": "exporters", "surgery.finetune": "finetune"}


def discover() -> list[str]:
    packages = []
    for name, folder in ROOTS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return sorted(set(packages))


setup(packages=discover())
