"""Where the page's pictures go: the output folder and each tab's folder (never outside the
folders the server serves), saving in the format and with the names the settings ask for,
and whether the engine's own saving already gives that."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from app.imagefiles import IMAGE_SUFFIXES, expand_pattern, inside_folders, save_image
from app.settings import DEFAULT_DIR_PATTERN, DEFAULT_FOLDERS, DEFAULT_NAME_PATTERN, Settings
from core.engine_protocol import EngineProtocol
from core.params import GenerationParams

log = logging.getLogger(__name__)

TAB_FOLDER = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "img2img", "extras": "extras"}


class Outputs:
    """The page's output folders. ``served_roots``: the folders the server serves images from,
    fixed at its start (default: the engine's output folder); the page saves only inside them."""

    def __init__(self, engine: EngineProtocol, settings: Settings, served_roots: Sequence[str | Path] | None = None):
        self.engine = engine
        self.settings = settings
        self.served_roots = [Path(p) for p in served_roots] if served_roots else [self.engine_output_root()]

    def engine_output_root(self) -> Path:
        """The output folder launch.py was given (--outdir)."""
        return Path(self.engine.output_dir)

    def create_root(self) -> None:
        """Create the output folder; when it cannot be, saving says so at the first job and the
        page still comes up."""
        try:
            self.output_root().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create the output folder %s: %s", self.output_root(), exc)

    def output_root(self) -> Path:
        """The "Output folder" setting when it lies inside the served folders, else --outdir's:
        a setting never widens what the server writes to or serves (folder_problems says why
        one is ignored)."""
        configured = self.settings["outdir"]
        if configured and inside_folders(configured, self.served_roots):
            return Path(configured).expanduser()
        return self.engine_output_root()

    def folder(self, tab: str) -> Path:
        """The folder of a tab's images (before the date sub-folder): the tab's folder setting
        inside the output folder, or its default name when the setting leads outside."""
        key = TAB_FOLDER.get(tab, tab)
        folder = self.output_root() / self.settings[f"outdir_{key}"]
        if inside_folders(folder, self.served_roots):
            return folder
        return self.output_root() / DEFAULT_FOLDERS[key]

    def folder_problems(self, values: dict[str, Any]) -> list[str]:
        """Why the folder settings in ``values`` (any of outdir, outdir_txt2img, ...; the others
        as saved) lead outside the folders this server saves to and serves; [] when none do."""
        def value(key: str) -> str:
            return str(values[key] if key in values else self.settings[key]).strip()

        roots = ", ".join(str(r) for r in self.served_roots)
        problems = []
        root = self.engine_output_root()
        if value("outdir"):
            configured = Path(value("outdir")).expanduser()
            if inside_folders(configured, self.served_roots):
                root = configured
            else:
                problems.append(f"Output folder {configured} is outside the folder this server saves to and serves "
                                f"({roots}); start launch.py with --outdir {configured} to save there")
        for key in DEFAULT_FOLDERS:
            folder = root / value(f"outdir_{key}")
            if value(f"outdir_{key}") and not inside_folders(folder, self.served_roots):
                problems.append(f"{key} folder {folder} is outside the output folder ({roots})")
        return problems

    def served_image(self, path: str | None) -> str | None:
        """``path`` when it is an image file inside the served folders, else None: what a page
        element may hand on as a picture (a hidden text box can be sent holding anything)."""
        if not path or Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            return None
        if not inside_folders(path, self.served_roots) or not Path(path).is_file():
            return None
        return str(path)

    def folders(self) -> dict[str, Path]:
        return {name: self.folder(name) for name in ("txt2img", "img2img", "extras")}

    def engine_saves(self, tab: str) -> bool:
        """Whether the engine's own saving gives what the settings ask for (the default)."""
        s = self.settings
        key = TAB_FOLDER[tab]
        return (s["image_format"] == "png" and s["filename_pattern"] == DEFAULT_NAME_PATTERN
                and s["directory_pattern"] == DEFAULT_DIR_PATTERN and s[f"outdir_{key}"] == DEFAULT_FOLDERS[key]
                and Path(self.output_root()).resolve() == self.engine_output_root().resolve())

    def save(self, tab: str, image: Image.Image, infotext: str | None, params: Any = None,
             seed: int | None = None, chunks: dict[str, str] | None = None) -> Path:
        """Save where and how the settings say (used when the engine's layout is not wanted)."""
        s = self.settings
        fields = {
            "seed": seed if seed is not None else "",
            **_pattern_fields(params),
            "width": image.width, "height": image.height,
        }
        directory = self.folder(tab)
        sub = expand_pattern(s["directory_pattern"], fields).strip("/ ")
        if sub:
            directory = directory / sub
        name = expand_pattern(s["filename_pattern"], fields).strip(" -_")
        return save_image(image, directory, name=name, fmt=s["image_format"], infotext=infotext,
                          chunks=chunks, quality=s["jpeg_quality"])

    def save_in(self, folder: Path, stem: str, image: Image.Image, infotext: str | None) -> Path:
        """Save in ``folder`` (a batch's output folder) as ``stem``, in the settings' format."""
        return save_image(image, folder, name=stem, fmt=self.settings["image_format"], infotext=infotext,
                          quality=self.settings["jpeg_quality"])

    @staticmethod
    def save_or_say_why(save: Callable[[], Path], folder: Path, unsaved: list[str]) -> Path | None:
        """``save()``'s path; None after an OSError (a full or read-only folder), whose reason is
        added to ``unsaved``: the picture stays on the page instead of being lost."""
        try:
            return save()
        except OSError as exc:
            unsaved.append(f"not saved in {folder}: {exc.strerror or exc}")
            return None


def _pattern_fields(params: GenerationParams | None) -> dict[str, Any]:
    """What a job's parameters give the file and folder name patterns ([prompt], [model_name], ...);
    empty for a picture no job made (an upscaled upload)."""
    if params is None:
        return dict.fromkeys(("prompt", "model_name", "sampler", "scheduler", "steps", "cfg"), "")
    return {"prompt": params.prompt, "model_name": Path(params.checkpoint or "").stem, "sampler": params.sampler,
            "scheduler": params.scheduler, "steps": params.steps, "cfg": params.cfg_scale}
