"""The "send to" buttons: a result, a gallery picture, a PNG Info picture or an extension's
output goes to a tab, its infotext filling that tab's fields."""
from __future__ import annotations

from typing import Any, Callable

from app.page.generation import PICTURE_FIELDS, text_fields
from app.page.studio import StudioUI

# -> (picture path or None, infotext): what a send-to button's inputs give
Resolve = Callable[..., tuple[Any, str]]


class SendTo:
    """The send-to targets of a page: each generation tab and Super-resolution."""

    def __init__(self, ui: StudioUI, tab_bar: Any, tabs: dict[str, Any], extras: dict[str, Any]):
        self.ui = ui
        self.targets: dict[str, tuple[list[Any], Callable[[Any, str], list[Any]]]] = {}
        for name, tab in tabs.items():
            names = text_fields(name)
            components = [tab_bar, *(tab.fields[p] for p in PICTURE_FIELDS[name]), *(tab.fields[f] for f in names)]
            self.targets[name] = (components, self._filler(name, names))
        self.targets["extras"] = ([tab_bar, extras["image"], extras["mode"]], ui.generation.send_to_extras)

    def _filler(self, name: str, names: list[str]) -> Callable[[Any, str], list[Any]]:
        return lambda path, infotext: self.ui.generation.send_to(name, path, infotext, names)

    def wire(self, button: Any, target: str, inputs: list[Any], resolve: Resolve) -> None:
        """``button`` sends what ``resolve(*inputs)`` gives to ``target``."""
        outputs, fill = self.targets[target]

        def handler(*values):
            path, infotext = resolve(*values)
            self.ui.generation.check_sendable(path, infotext)
            return fill(path, infotext or "")

        button.click(handler, inputs=inputs, outputs=outputs, concurrency_limit=None, show_progress="hidden")

    def wire_all(self, buttons: dict[str, Any], inputs: list[Any], resolve: Resolve) -> None:
        for target, button in buttons.items():
            self.wire(button, target, inputs, resolve)

    def wire_extension(self, components: dict[str, Any]) -> None:
        """An extension tab may offer send-to buttons next to an infotext and an image path."""
        for key, target in (("send_txt2img", "txt2img"), ("send_img2img", "img2img")):
            if key not in components or "infotext" not in components:
                continue
            if "image" in components:
                # the path comes from a hidden text box, which a request can fill with any
                # path: only an image inside the served folders is passed on
                self.wire(components[key], target, [components["image"], components["infotext"]],
                          lambda path, info: (self.ui.outputs.served_image(path), info))
            else:
                self.wire(components[key], target, [components["infotext"]], lambda info: (None, info))


def picture_and_text(path: Any, infotext: str) -> tuple[Any, str]:
    """A picture path box and an infotext box as they are (an empty path: none)."""
    return path or None, infotext
