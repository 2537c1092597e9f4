"""Minimal Gradio page for text-to-image generation.

This module only collects parameters, calls ``core.engine.Engine`` and shows
what comes back; no tensor work happens here.  ``core`` is imported lazily so
the page can be built (and tested) with any object that offers the same
methods as the engine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

# An offline studio must not phone home; set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)

def sampler_choices() -> tuple[list[str], list[str]]:
    """Sampler names and schedule types, as the engine knows them."""
    from core.sampling.samplers import SAMPLERS
    from core.sampling.schedules import AUTOMATIC, SCHEDULES

    return list(SAMPLERS), [AUTOMATIC, *SCHEDULES]
TITLE = "Stable Diffusion Studio"


def _is_engine_error(exc: BaseException) -> bool:
    """True for core.engine.EngineError (and subclasses) without importing core."""
    return any(cls.__name__ == "EngineError" for cls in type(exc).__mro__)


def _default_params_cls() -> type:
    from core.params import GenerationParams

    return GenerationParams


class _ProgressBridge:
    """Turns the engine's progress callbacks into a Gradio progress bar.

    The engine calls ``progress(p)`` with an object that has ``fraction``,
    ``step``/``steps`` and ``batch``/``batches``; plain ``(step, total)`` and
    ``(fraction,)`` calls are accepted too.  Progress never breaks a run.
    """

    def __init__(self, progress: Any):
        self.progress = progress

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if self.progress is None or not (args or kwargs):
            return
        try:
            first = args[0] if args else None
            if hasattr(first, "fraction"):
                desc = None
                if hasattr(first, "step") and hasattr(first, "steps"):
                    desc = f"Step {first.step}/{first.steps}"
                    if getattr(first, "batches", 1) > 1:
                        desc += f", batch {first.batch + 1}/{first.batches}"
                self.progress(float(first.fraction), desc=desc)
                return
            step = kwargs.get("step", first)
            total = kwargs.get("total", args[1] if len(args) > 1 else None)
            if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
                self.progress(min(max(step / total, 0.0), 1.0), desc=f"Step {int(step)}/{int(total)}")
            elif isinstance(step, float) and 0.0 <= step <= 1.0:
                self.progress(step)
        except Exception:  # cosmetic only
            log.debug("progress update failed", exc_info=True)


class StudioUI:
    """The page's behaviour, kept apart from the Gradio layout."""

    def __init__(self, engine: Any, params_cls: Callable[..., Any] | None = None):
        self.engine = engine
        self._params_cls = params_cls

    @property
    def params_cls(self) -> Callable[..., Any]:
        if self._params_cls is None:
            self._params_cls = _default_params_cls()
        return self._params_cls

    def checkpoints(self) -> list[str]:
        try:
            return list(self.engine.list_checkpoints())
        except Exception as exc:  # the page must come up even if the folder is odd
            log.warning("could not list checkpoints: %s", exc)
            return []

    def refresh_checkpoints(self, current: str | None) -> Any:
        choices = self.checkpoints()
        value = current if current in choices else (choices[0] if choices else None)
        return gr.Dropdown(choices=choices, value=value)

    def generate(
        self,
        prompt: str,
        negative_prompt: str,
        checkpoint: str | None,
        sampler: str,
        scheduler: str,
        steps: float,
        cfg_scale: float,
        seed: float | None,
        width: float,
        height: float,
        batch_count: float,
        batch_size: float,
        progress: Any = None,
    ) -> tuple[list[Any], str]:
        """Run txt2img; returns (gallery items, infotext).

        Engine errors become ``gr.Error`` so Gradio shows them and the app
        keeps running.
        """
        params = self.params_cls(
            prompt=prompt or "",
            negative_prompt=negative_prompt or "",
            steps=int(steps),
            cfg_scale=float(cfg_scale),
            seed=-1 if seed is None else int(seed),
            width=int(width),
            height=int(height),
            sampler=sampler,
            scheduler=scheduler or "Automatic",
            batch_size=int(batch_size),
            batch_count=int(batch_count),
            checkpoint=checkpoint or None,
        )
        try:
            results = self.engine.txt2img(params, progress=_ProgressBridge(progress))
        except Exception as exc:
            if _is_engine_error(exc):
                raise gr.Error(str(exc), print_exception=False) from exc
            log.exception("generation failed")
            raise gr.Error(f"Generation failed: {type(exc).__name__}: {exc}") from exc
        return self.gallery_items(results), "\n\n".join(r.infotext for r in results)

    @staticmethod
    def gallery_items(results: Sequence[Any]) -> list[Any]:
        # The saved PNG keeps the infotext in its metadata; prefer serving it.
        items: list[Any] = []
        for r in results:
            path = getattr(r, "path", None)
            items.append(str(path) if path is not None and Path(path).is_file() else r.image)
        return items


def build_ui(engine: Any, params_cls: Callable[..., Any] | None = None) -> gr.Blocks:
    ui = StudioUI(engine, params_cls)
    choices = ui.checkpoints()

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}")
        with gr.Row():
            checkpoint = gr.Dropdown(
                choices=choices,
                value=choices[0] if choices else None,
                label="Checkpoint",
                info=None if choices else "No checkpoints found: put .safetensors files in models/Stable-diffusion",
                scale=4,
            )
            refresh = gr.Button("Refresh", scale=1)
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a photo of ...")
                negative = gr.Textbox(label="Negative prompt", lines=2)
                samplers, schedules = sampler_choices()
                with gr.Row():
                    sampler = gr.Dropdown(choices=samplers, value="Euler", label="Sampler")
                    scheduler = gr.Dropdown(choices=schedules, value=schedules[0], label="Schedule type")
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps")
                cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG scale")
                with gr.Row():
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height")
                with gr.Row():
                    batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                generate = gr.Button("Generate", variant="primary")
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="Output", format="png", columns=2, object_fit="contain")
                infotext = gr.Textbox(label="Generation info", lines=4, interactive=False)

        # Named parameters so the HTTP API (api_name="/txt2img") reads well.
        def txt2img(prompt, negative_prompt, checkpoint, sampler, scheduler, steps, cfg_scale, seed, width, height,
                    batch_count, batch_size, progress=gr.Progress()):
            return ui.generate(prompt, negative_prompt, checkpoint, sampler, scheduler, steps, cfg_scale, seed, width,
                               height, batch_count, batch_size, progress=progress)

        generate.click(
            txt2img,
            inputs=[prompt, negative, checkpoint, sampler, scheduler, steps, cfg, seed, width, height, batch_count, batch_size],
            outputs=[gallery, infotext],
            api_name="txt2img",
        )
        refresh.click(ui.refresh_checkpoints, inputs=[checkpoint], outputs=[checkpoint],
                      api_name="refresh_checkpoints")

    demo.studio = ui  # handy for tests and scripting
    return demo


def serve(args: Any) -> int:
    """Build the engine and serve the page until interrupted (launch.py calls this)."""
    try:
        from core.engine import Engine, EngineError
    except ImportError as exc:
        print(f"launch.py: error: the engine (core.engine) cannot be imported: {exc}")
        return 1

    ckpt_dir = Path(args.ckpt_dir)
    outdir = Path(args.outdir)
    try:
        engine = Engine(device=args.device, precision=args.precision, ckpt_dir=ckpt_dir, output_dir=outdir)
    except EngineError as exc:
        print(f"launch.py: error: {exc}")
        return 1

    host = "0.0.0.0" if getattr(args, "listen", False) else "127.0.0.1"
    demo = build_ui(engine)
    demo.queue()
    demo.launch(
        server_name=host,
        server_port=int(args.port),
        allowed_paths=[str(outdir.resolve())],
        show_error=True,
        inbrowser=False,
    )
    return 0
