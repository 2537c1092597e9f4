"""The Styles and Settings tabs: saving, deleting and applying prompt styles, and saving the
settings the page edits (only the edited ones) with what that changes."""
from __future__ import annotations

from typing import Any, Sequence

import gradio as gr

from app.forms import page_defaults
from app.page.models import Models
from app.page.outputs import Outputs
from app.settings import OPTION_BY_KEY, Settings, SettingsError
from app.styles import StyleDatabase, StyleError


class StylesSettings:
    def __init__(self, settings: Settings, styles: StyleDatabase, outputs: Outputs, models: Models):
        self.settings = settings
        self.styles = styles
        self.outputs = outputs
        self.models = models

    # ------------------------------------------------------------------ settings

    def settings_form(self, keys: Sequence[str]) -> dict[str, Any]:
        """The saved values of the Settings tab's ``keys``: what the tab shows when the page is
        (re)loaded or applied, and what ``apply_settings`` later tells edits from."""
        values = self.settings.values()
        return {key: values[key] for key in keys}

    def apply_settings(self, keys: Sequence[str], values: Sequence[Any], shown: dict[str, Any] | None = None) -> str:
        """Save the Settings tab's ``values``. With ``shown`` (the values the tab was loaded with),
        only the ones the user edited are written: a value changed meanwhile by the API or
        another page is not put back by a page that merely showed the old one."""
        edited = dict(zip(keys, values))
        if shown is not None:
            edited = {k: v for k, v in edited.items() if not _same_setting(k, v, shown.get(k))}
        problems = self.outputs.folder_problems({k: v for k, v in edited.items() if k.startswith("outdir")})
        if problems:
            raise gr.Error(f"Settings not saved: {'; '.join(problems)}", print_exception=False)
        try:
            changed = self.settings.update(edited) if edited else []
        except SettingsError as exc:
            raise gr.Error(f"Settings not saved: {exc}", print_exception=False) from None
        except OSError as exc:
            raise gr.Error(f"Settings not saved: cannot write {self.settings.path}: {exc}",
                           print_exception=False) from None
        reloads = self.models.apply_model_settings()
        notice = self.settings.save_notice if edited else None
        if notice:  # the user's file was unreadable: it is kept aside, and they must know
            gr.Warning(notice)
        if not changed and not reloads:
            return f"Nothing changed ({self.settings.place})" + (f". {notice}" if notice else "")
        needs_reload = [k for k in changed if k.startswith("default_")]
        text = f"Saved {len(changed)} setting(s) to {self.settings.place}; they apply to the next job"
        if reloads:
            text += " (which loads the checkpoint again)"
        if needs_reload:
            text += "; new defaults show when the page is reloaded"
        if notice:
            text += f". {notice}"
        return text

    def saved_settings(self, keys: Sequence[str]) -> list[Any]:
        """The Settings tab's updates after a load or Apply: the values shown, then each value."""
        now = self.settings_form(keys)
        return [now, *now.values()]

    def apply_and_show(self, keys: Sequence[str], shown: dict[str, Any], *values: Any) -> list[Any]:
        """Apply's updates: the status line, then the saved values as ``saved_settings``."""
        return [self.apply_settings(keys, values, shown), *self.saved_settings(keys)]

    def settings_intro(self) -> str:
        """The Settings tab's first lines: where they are saved, and what was wrong with them."""
        intro = (f"Saved to `{self.settings.place}`. Folders, format and preview apply to the next job; defaults "
                 "apply when the page is reloaded.")
        warnings = [*self.settings.load_warnings, *(f"{p}: ignored" for p in self.outputs.folder_problems({}))]
        if warnings:
            intro += "\n\n" + "\n".join(f"- {w}" for w in warnings)
        return intro

    def page_defaults(self) -> dict[str, Any]:
        return page_defaults(self.settings)

    # ------------------------------------------------------------------ styles

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> str:
        try:
            style = self.styles.save_style(name, prompt, negative_prompt)
        except StyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except OSError as exc:
            raise gr.Error(f"styles: cannot write {self.styles.path}: {exc}", print_exception=False) from None
        message = f"Style {style.name!r} saved to {self.styles.path}"
        gr.Info(message)  # the tabs' log is below the results, out of sight of the Save button
        return message

    def delete_style(self, name: str) -> str:
        try:
            self.styles.delete_style(name)
        except StyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"Style {name!r} deleted"

    def apply_styles_to_prompt(self, names: list[str] | None, prompt: str, negative: str) -> tuple[str, str, list]:
        try:
            prompt, negative = self.styles.apply(names or [], prompt or "", negative or "")
        except StyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return prompt, negative, []


    def style_choices(self, count: int) -> list[Any]:
        """``count`` style dropdowns' updates: the names in the styles file."""
        names = self.styles.names()
        return [gr.Dropdown(choices=names) for _ in range(count)]

    def reload_styles(self, count: int) -> list[Any]:
        """The styles file read again: ``count`` dropdowns' updates, then a note on the file."""
        self.styles.reload()
        note = self.styles.warning or f"{len(self.styles.names())} style(s) from {self.styles.path}"
        return [*self.style_choices(count), note]

    def show_style(self, name: str | None) -> tuple[str, str, str]:
        """(name, prompt, negative prompt) of the style picked in the Styles tab."""
        style = self.styles.get(name) if name else None
        if style is None:
            return "", "", ""
        return style.name, style.prompt, style.negative_prompt


def _same_setting(key: str, value: Any, shown: Any) -> bool:
    """Whether the page's ``value`` for setting ``key`` is the one it showed (as the setting
    reads it: a number box's 25.0 is the 25 shown)."""
    try:
        return OPTION_BY_KEY[key].check(value) == shown
    except (ValueError, TypeError):
        return False  # not a value the setting takes: saving says why
