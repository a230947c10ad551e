"""An inert stand-in for ``torchvision``, for reference code whose old timm imports it without using it.

Old timm releases (0.4.5 for isl-org/DPT, 0.6.13 for baaivision/EVA) import torchvision for their data
transforms only, and no torchvision build matches every torch these scripts run on. :func:`install` puts a
module finder first on ``sys.meta_path`` that answers every ``torchvision[.*]`` import with a module whose
every attribute is another stand-in (calling one returns itself). Nothing a model runs touches it.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class Stub(types.ModuleType):
    """An inert module: any attribute is another stand-in, calling it returns itself."""

    __path__: list[str] = []

    def __getattr__(self, name: str) -> "Stub":
        if name.startswith("__"):
            raise AttributeError(name)
        return Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs) -> "Stub":
        return self


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return Stub(spec.name)

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Answer later ``torchvision`` imports with stand-ins (modules already imported stay as they are)."""
    sys.meta_path.insert(0, _Finder())
