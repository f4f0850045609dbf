"""Public names of a package loaded on first use, so that importing the package stays light.

>>> import types
>>> module = types.ModuleType("demo")
>>> module.__getattr__, module.__dir__ = lazy_names("math", {"pi": "math"}, vars(module))
>>> round(module.pi, 2), "pi" in vars(module)
(3.14, True)
"""

from __future__ import annotations

import importlib

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: dict[str, str], namespace: dict, extra: tuple[str, ...] = ()):
    """A module's ``__getattr__`` and ``__dir__`` for names imported from their homes on first use.

    Parameters
    ----------
    package : str
        The module's name (``__name__``), against which relative homes resolve.
    homes : dict of str to str
        Public name -> the module it is defined in (``".api"`` or ``"dsb.api"``).
    namespace : dict
        The module's globals: a loaded name is put there, so later lookups skip ``__getattr__``.
    extra : tuple of str
        Further names that ``__dir__`` lists (``__version__``).
    """

    def __getattr__(name: str):
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*homes, *extra])

    return __getattr__, __dir__
