"""Importing spandrel without torchvision.

Why this exists: spandrel declares torchvision as a dependency, but torchvision from the package
registry cannot be imported beside the CPU torch build this project pins (and, once installed, it
also breaks the transformers and diffusers imports). So spandrel is installed with ``--no-deps``
(``requirements-nodeps.txt``). Of spandrel's ~45 architectures only two touch torchvision, and
both import it at module import time: RestoreFormer (``normalize``, a face restorer) and LaMa
(``rotate``/``InterpolationMode``, an inpainting model). Neither is an upscaler. Since
``import spandrel`` imports every architecture, a missing torchvision would make the whole
package fail to import.

When torchvision cannot be imported, :func:`import_spandrel` therefore puts a stand-in for
``torchvision``, ``torchvision.transforms`` and ``torchvision.transforms.functional`` into
``sys.modules`` *only for the duration of* ``import spandrel``. Every name taken from the
stand-in is a placeholder that raises a clear :class:`EngineError` when used, so those two
architectures fail loudly if they ever run; the upscalers never touch them. Afterwards the
stand-in is removed again, so that no other library (transformers, diffusers check
``importlib.util.find_spec("torchvision")``) mistakes it for a real torchvision.

A working torchvision (e.g. beside a CUDA torch from the registry) is used as it is.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types

from core.errors import EngineError

_STUB_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_lock = threading.Lock()


class _Missing:
    """A torchvision name spandrel imported from the stand-in: unusable, and says why."""

    def __init__(self, qualname: str):
        self._qualname = qualname

    def _fail(self):
        raise EngineError(
            f"this model needs torchvision ({self._qualname}), which is not installed here; "
            "only spandrel's RestoreFormer and LaMa architectures use it, and neither is an upscaler"
        )

    def __call__(self, *args, **kwargs):
        self._fail()

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()

    def __repr__(self) -> str:
        return f"<missing torchvision name {self._qualname}>"


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "stand-in used only while spandrel is imported; see core/upscaling/spandrel_import.py")
    # A real spec, so importlib.util.find_spec does not raise on a module without one.
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{name}.{attr}")

    module.__getattr__ = __getattr__  # PEP 562: serves `from torchvision... import anything`
    return module


def torchvision_importable() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.transforms.functional")
        return True
    except Exception:  # a torchvision that does not match torch fails in many ways
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def import_spandrel():
    """``import spandrel``, with a temporary torchvision stand-in if torchvision is unusable."""
    with _lock:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if importlib.util.find_spec("spandrel") is None:
            raise EngineError(
                "spandrel (the upscaler model library) is not installed: "
                "pip install --no-deps -r requirements-nodeps.txt"
            )
        if torchvision_importable():
            return importlib.import_module("spandrel")
        stubs = {name: _stub_module(name) for name in _STUB_NAMES}
        stubs["torchvision"].transforms = stubs["torchvision.transforms"]
        stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]
        sys.modules.update(stubs)
        try:
            return importlib.import_module("spandrel")
        finally:
            for name in _STUB_NAMES:
                if sys.modules.get(name) is stubs[name]:
                    del sys.modules[name]
