"""The layout of the txt2img, img2img and Inpaint tabs: one builder, with each tab's own
inputs (the input image; hires. fix; the mask and the inpainting options)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.forms import FILL_MODES, FORM_DEFAULTS as DEFAULT, FORM_FIELDS, INPAINT_AREAS, INPAINT_SOURCES, MASK_MODES, \
    NO_SCRIPT, OUTPAINT_DIRECTIONS, RESIZE_MODES, SAME
from app.page.extra_networks import KINDS as EXTRA_NETWORK_KINDS
from app.page.generation import text_fields
from app.page.prompt_tools import EMPTY_COUNT
from app.page.studio import StudioUI
from app.page.uploads import mask_source_groups, picture_input, size_from_image

JOB = "studio-job"  # concurrency group: jobs on the device run one at a time
SEND_TARGETS = (("img2img", "→ img2img"), ("inpaint", "→ Inpaint"), ("extras", "→ Super-resolution"))
# The inpaint brush: white at half opacity, as A1111's mask, so the picture shows through what is
# painted (any paint at all marks the mask: uploads.editor_image_and_mask).
MASK_BRUSH = ("#ffffff", 0.5)


class GenerationTab:
    """The components of one generation tab, by form field name, plus its result widgets."""

    def __init__(self, name: str):
        self.name = name
        self.fields: dict[str, Any] = {}
        self.gallery: Any = None
        self.info: Any = None
        self.log: Any = None
        self.progress: Any = None
        self.items: Any = None  # gr.State: [{"path", "infotext", "seed"}]
        self.selected: Any = None  # gr.State: index picked in the gallery
        self.generate: Any = None
        self.style_name: Any = None
        self.save_style: Any = None
        self.send: dict[str, Any] = {}
        self.tools: dict[str, Any] = {}  # buttons wired in _wire

    def inputs(self) -> list[Any]:
        return [self.fields[name] for name in FORM_FIELDS[self.name]]


def tool_button(label: str, elem_id: str) -> gr.Button:
    wide = len(label) > 2
    return gr.Button(label, elem_id=elem_id, elem_classes="studio-tool-wide" if wide else "studio-tool", scale=0,
                     min_width=70 if wide else 40, size="sm" if wide else "lg")


def generation_tab(ui: StudioUI, tab: GenerationTab, checkpoint: Any, samplers: list[str], schedules: list[str],
                   defaults: dict[str, Any]) -> None:
    """Lay out ``tab`` (its components go into ``tab``) and wire its events."""
    tab.fields["checkpoint"] = checkpoint
    _prompt_row(ui, tab)
    _extra_networks_panel(ui, tab)
    with gr.Row():
        with gr.Column(scale=1):
            _settings_column(ui, tab, samplers, schedules, defaults)
        with gr.Column(scale=1):
            _results_column(tab)
    _wire(ui, tab)
    _wire_prompt_tools(ui, tab)


def _prompt_row(ui: StudioUI, tab: GenerationTab) -> None:
    name, f = tab.name, tab.fields
    with gr.Row():
        with gr.Column(scale=6):
            # each counter is drawn into the top right corner of the prompt box after it (studio.css)
            tab.tools["token_counter"] = gr.HTML(EMPTY_COUNT, elem_id=f"{name}_token_counter",
                                                 elem_classes="studio-token-row", padding=False)
            f["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{name}_prompt",
                                     placeholder="Prompt (Ctrl+Enter to generate, Ctrl+Up/Down to change a word's weight)")
            tab.tools["negative_token_counter"] = gr.HTML(EMPTY_COUNT, elem_id=f"{name}_negative_token_counter",
                                                          elem_classes="studio-token-row", padding=False)
            f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{name}_neg_prompt",
                                              placeholder="Negative prompt")
            # studio.js presses it once a prompt has stopped changing (the counters' debounce)
            tab.tools["count_tokens"] = gr.Button("Count tokens", visible="hidden", elem_id=f"{name}_token_button")
        with gr.Column(scale=2, min_width=220):
            tab.generate = gr.Button("Generate", variant="primary", elem_id=f"{name}_generate")
            with gr.Row():
                tab.tools["interrupt"] = gr.Button("Interrupt", elem_id=f"{name}_interrupt", size="sm")
                tab.tools["skip"] = gr.Button("Skip", elem_id=f"{name}_skip", size="sm")
            with gr.Row():
                tab.tools["paste"] = gr.Button("↙ Read parameters", elem_id=f"{name}_paste", size="sm",
                                               elem_classes="studio-paste")
            f["styles"] = gr.Dropdown(choices=ui.styles.names(), value=[], multiselect=True, label="Styles",
                                      elem_id=f"{name}_styles")
            with gr.Row():
                tab.tools["apply_styles"] = gr.Button("Apply styles to prompt", size="sm",
                                                      elem_id=f"{name}_apply_styles")
            with gr.Accordion("Save prompt as a style", open=False):
                tab.style_name = gr.Textbox(label="Style name", elem_id=f"{name}_style_name")
                tab.save_style = gr.Button("Save style", size="sm", elem_id=f"{name}_save_style")


def _extra_networks_panel(ui: StudioUI, tab: GenerationTab) -> None:
    """A1111's extra networks: a card grid per kind, one search for all, the picked card's info;
    a click goes through the hidden pick box and button (studio's extranet.js)."""
    name, networks = tab.name, ui.extra_networks
    grids = {}
    with gr.Accordion("Extra networks", open=False, elem_id=f"{name}_extra_networks"):
        with gr.Row(equal_height=True):
            search = gr.Textbox(label="Search", placeholder="Filter the cards by name", scale=6, max_lines=1,
                                elem_id=f"{name}_extranet_search")
            refresh = tool_button("↻", f"{name}_extranet_refresh")
        with gr.Tabs(elem_id=f"{name}_extranet_tabs"):
            for kind, label in EXTRA_NETWORK_KINDS.items():
                with gr.Tab(label, id=f"{name}_{kind}", elem_id=f"{name}_{kind}_tab"):
                    grids[kind] = gr.HTML(networks.cards_html(name, kind), elem_id=f"{name}_{kind}_cards",
                                          elem_classes="studio-cards-box")
        info = gr.HTML("", elem_id=f"{name}_extranet_info")
        pick = gr.Textbox(visible="hidden", elem_id=f"{name}_extranet_pick", max_lines=1)
        pick_button = gr.Button("Use card", visible="hidden", elem_id=f"{name}_extranet_pick_button")
    kinds = list(grids)

    def draw(query: str) -> list[str]:
        return [networks.cards_html(name, kind, query) for kind in kinds]

    quick = dict(concurrency_limit=None, show_progress="hidden")
    search.change(draw, inputs=search, outputs=list(grids.values()), trigger_mode="always_last", **quick)
    refresh.click(draw, inputs=search, outputs=list(grids.values()), **quick)
    # A checkpoint card's name, which build.py's _wire_checkpoint_cards loads after the click
    # (setting the menu from an event does not fire the menu's own change event).
    tab.tools["picked_checkpoint"] = gr.State(None)
    tab.tools["extranet_picked"] = pick_button.click(
        networks.pick, inputs=[pick, tab.fields["prompt"]],
        outputs=[tab.fields["prompt"], tab.fields["checkpoint"], info, tab.tools["picked_checkpoint"]], **quick)


def _wire_prompt_tools(ui: StudioUI, tab: GenerationTab) -> None:
    """The token counters (pressed by studio's extranet.js once a prompt stops changing) and the
    paste-parameters button (its fields: what an infotext fills on this tab)."""
    name, f, tools = tab.name, tab.fields, tab.tools
    quick = dict(concurrency_limit=None, show_progress="hidden")
    tools["count_tokens"].click(ui.prompt_tools.count_both, inputs=[f["prompt"], f["negative_prompt"], f["steps"]],
                                outputs=[tools["token_counter"], tools["negative_token_counter"]],
                                trigger_mode="always_last", **quick)
    names = text_fields(name)

    def paste(prompt, items):
        return ui.prompt_tools.paste(name, names, prompt, items)

    # a pasted sampler the chosen checkpoint refuses (an SD 1.x infotext's on FLUX.1) is replaced, and said
    tools["paste"].click(paste, inputs=[f["prompt"], tab.items], outputs=[f[n] for n in names], **quick).then(
        ui.models.sampler_menu, inputs=[f["checkpoint"], f["sampler"]], outputs=[f["sampler"]], **quick)


def _slider(f: dict[str, Any], name: str, low: float, high: float, step: float, label: str, elem_id: str,
            **options: Any) -> None:
    """The slider of form field ``name``, at its default."""
    f[name] = gr.Slider(low, high, value=DEFAULT[name], step=step, label=label, elem_id=elem_id, **options)


def _settings_column(ui: StudioUI, tab: GenerationTab, samplers: list[str], schedules: list[str],
                     defaults: dict[str, Any]) -> None:
    name, f = tab.name, tab.fields
    if name == "img2img":
        f["init_image"] = picture_input(label="Input image", type="pil", image_mode=None, height=360,
                                   sources=["upload", "clipboard"], elem_id="img2img_image")
        f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=DEFAULT["resize_mode"], label="Resize mode",
                                    elem_id="img2img_resize_mode")
    if name == "inpaint":
        _inpaint_inputs(f)
    with gr.Row():
        f["sampler"] = gr.Dropdown(choices=samplers, value=defaults["sampler"], label="Sampler",
                                   elem_id=f"{name}_sampler")
        f["scheduler"] = gr.Dropdown(choices=schedules, value=defaults["scheduler"], label="Schedule type",
                                     elem_id=f"{name}_scheduler")
    f["steps"] = gr.Slider(1, 150, value=defaults["steps"], step=1, label="Sampling steps", elem_id=f"{name}_steps")
    _size_rows(tab, defaults)
    f["cfg_scale"] = gr.Slider(1.0, 30.0, value=defaults["cfg_scale"], step=0.5, label="CFG scale",
                               elem_id=f"{name}_cfg_scale")
    # Forge's name; only FLUX.1 dev reads it (CFG scale 1 turns the real guidance off there). Shown
    # once the chosen checkpoint is one that takes it (Models.follow_checkpoint, on page load too).
    _slider(f, "distilled_cfg_scale", 0.0, 30.0, 0.1, "Distilled CFG Scale (FLUX.1 dev)", f"{name}_distilled_cfg_scale",
            visible=False)
    if name != "txt2img":
        f["denoising_strength"] = gr.Slider(0.0, 1.0, value=defaults["denoising_strength"], step=0.01,
                                            label="Denoising strength", elem_id=f"{name}_denoising_strength")
    _seed_rows(tab)
    _slider(f, "clip_skip", 1, 12, 1, "Clip skip", f"{name}_clip_skip")
    f["tiling"] = gr.Checkbox(DEFAULT["tiling"], label="Tiling", elem_id=f"{name}_tiling")
    if name == "txt2img":
        _hires_inputs(ui, f, samplers, schedules)
    _refiner_inputs(ui, f, name)
    if name == "inpaint":
        _inpaint_options(f)
    if name in ("txt2img", "img2img"):
        _script_inputs(ui, f, name)


def _size_rows(tab: GenerationTab, defaults: dict[str, Any]) -> None:
    name, f = tab.name, tab.fields
    with gr.Row(equal_height=True):
        with gr.Column(scale=6):
            f["width"] = gr.Slider(64, 2048, value=defaults["width"], step=8, label="Width", elem_id=f"{name}_width")
            f["height"] = gr.Slider(64, 2048, value=defaults["height"], step=8, label="Height",
                                    elem_id=f"{name}_height")
        with gr.Column(scale=0, min_width=48):
            tab.tools["swap"] = tool_button("⇅", f"{name}_swap_size")
            if name != "txt2img":
                tab.tools["from_image"] = tool_button("⤢", f"{name}_size_from_image")
        with gr.Column(scale=3, min_width=120):
            _slider(f, "batch_count", 1, 100, 1, "Batch count", f"{name}_batch_count")
            _slider(f, "batch_size", 1, 8, 1, "Batch size", f"{name}_batch_size")


def _seed_rows(tab: GenerationTab) -> None:
    name, f = tab.name, tab.fields
    with gr.Row(equal_height=True):
        f["seed"] = gr.Number(value=DEFAULT["seed"], precision=0, label="Seed (-1 = random)", elem_id=f"{name}_seed",
                              scale=6)
        tab.tools["dice"] = tool_button("Random", f"{name}_random_seed")
        tab.tools["reuse"] = tool_button("Reuse", f"{name}_reuse_seed")
    with gr.Accordion("Variation seed", open=False, elem_id=f"{name}_variation"):
        with gr.Row():
            f["subseed"] = gr.Number(value=DEFAULT["subseed"], precision=0, label="Variation seed",
                                     elem_id=f"{name}_subseed")
            _slider(f, "subseed_strength", 0.0, 1.0, 0.01, "Variation strength", f"{name}_subseed_strength")


def _results_column(tab: GenerationTab) -> None:
    name = tab.name
    tab.progress = gr.HTML("", elem_id=f"{name}_progress")
    tab.gallery = gr.Gallery(label="Output", format="png", columns=2, object_fit="contain", height=480,
                             elem_id=f"{name}_gallery", buttons=["download", "fullscreen"])
    with gr.Row(elem_classes="studio-actions"):
        for target, label in SEND_TARGETS:
            tab.send[target] = gr.Button(label, size="sm", elem_id=f"{name}_send_to_{target}")
    tab.info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{name}_info",
                          buttons=["copy"])
    tab.log = gr.HTML("", elem_id=f"{name}_log")
    tab.items = gr.State([])
    tab.selected = gr.State(0)


def _wire(ui: StudioUI, tab: GenerationTab) -> None:
    name, f, tools, generation = tab.name, tab.fields, tab.tools, ui.generation
    quick = dict(concurrency_limit=None, show_progress="hidden")

    def run(*values):
        yield from generation.stream(name, values)

    tab.generate.click(run, inputs=tab.inputs(), outputs=[tab.gallery, tab.info, tab.log, tab.progress, tab.items],
                       api_name=name, concurrency_id=JOB, concurrency_limit=1, show_progress="minimal").then(
        lambda: 0, outputs=[tab.selected], show_progress="hidden")
    tools["interrupt"].click(generation.interrupt, api_name=f"{name}_interrupt", **quick)
    tools["skip"].click(generation.skip, api_name=f"{name}_skip", **quick)
    tools["swap"].click(lambda w, h: (h, w), inputs=[f["width"], f["height"]], outputs=[f["width"], f["height"]],
                        **quick)
    tools["dice"].click(lambda: DEFAULT["seed"], outputs=[f["seed"]], **quick)  # -1: a random seed
    tools["reuse"].click(generation.reuse_seed, inputs=[tab.items, tab.selected], outputs=[f["seed"]], **quick)
    tools["apply_styles"].click(ui.styles_settings.apply_styles_to_prompt,
                                inputs=[f["styles"], f["prompt"], f["negative_prompt"]],
                                outputs=[f["prompt"], f["negative_prompt"], f["styles"]], **quick)
    tab.gallery.select(generation.picked, inputs=[tab.items], outputs=[tab.selected, tab.info], **quick)
    if "from_image" in tools:
        source = f["init_image"] if name == "img2img" else f["editor"]
        tools["from_image"].click(size_from_image, inputs=[source], outputs=[f["width"], f["height"]], **quick)


def _hires_inputs(ui: StudioUI, f: dict[str, Any], samplers: list[str], schedules: list[str]) -> None:
    with gr.Column(elem_classes="studio-switched"):
        # the switch, drawn over the accordion's header (studio.css): in sight while it is closed
        f["enable_hr"] = gr.Checkbox(DEFAULT["enable_hr"], label="Enable", container=False,
                                     elem_id="txt2img_enable_hr", elem_classes="studio-header-switch")
        with gr.Accordion(hires_header_label(DEFAULT["enable_hr"]), open=False, elem_id="txt2img_hires") as accordion:
            with gr.Row():
                f["hr_upscaler"] = gr.Dropdown(choices=ui.models.hires_upscalers(), value=DEFAULT["hr_upscaler"],
                                               label="Upscaler", elem_id="txt2img_hr_upscaler")
                _slider(f, "hr_second_pass_steps", 0, 150, 1, "Hires steps (0 = same)", "txt2img_hires_steps")
                _slider(f, "hr_denoising_strength", 0.0, 1.0, 0.01, "Denoising strength", "txt2img_hr_denoising_strength")
            with gr.Row():
                _slider(f, "hr_scale", 1.0, 4.0, 0.05, "Upscale by", "txt2img_hr_scale")
                _slider(f, "hr_resize_x", 0, 4096, 8, "Resize width to (0 = by scale)", "txt2img_hr_resize_x")
                _slider(f, "hr_resize_y", 0, 4096, 8, "Resize height to (0 = by scale)", "txt2img_hr_resize_y")
            with gr.Row():
                f["hr_sampler_name"] = gr.Dropdown(choices=[SAME, *samplers], value=DEFAULT["hr_sampler_name"],
                                                   label="Hires sampler", elem_id="txt2img_hr_sampler")
                f["hr_scheduler"] = gr.Dropdown(choices=[SAME, *schedules], value=DEFAULT["hr_scheduler"],
                                                label="Hires schedule type", elem_id="txt2img_hr_scheduler")
            f["hr_prompt"] = gr.Textbox(label="Hires prompt (empty = the same)", lines=1, elem_id="txt2img_hr_prompt")
            f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt (empty = the same)", lines=1,
                                                 elem_id="txt2img_hr_neg_prompt")
    f["enable_hr"].change(hires_header, inputs=[f["enable_hr"]], outputs=[accordion], concurrency_limit=None,
                          show_progress="hidden")


def hires_header_label(enabled: bool) -> str:
    return f"Hires. fix: {'on' if enabled else 'off'}"


def hires_header(enabled: bool) -> Any:
    """The Hires. fix accordion's update when its switch changes: its header says whether it is
    on (the switch itself is drawn over the header: studio.css), and switching it on, by hand or
    from an infotext sent from PNG Info, opens it."""
    if enabled:
        return gr.Accordion(label=hires_header_label(True), open=True)
    return gr.Accordion(label=hires_header_label(False))


def _refiner_inputs(ui: StudioUI, f: dict[str, Any], name: str) -> None:
    with gr.Accordion("Refiner", open=False, elem_id=f"{name}_refiner"):
        with gr.Row():
            f["refiner_checkpoint"] = gr.Dropdown(
                choices=ui.models.refiner_choices(), value=DEFAULT["refiner_checkpoint"], label="Refiner checkpoint",
                info="takes over for the last steps (SDXL: the refiner); None: no refiner",
                elem_id=f"{name}_refiner_checkpoint", scale=3)
            _slider(f, "refiner_switch_at", 0.01, 1.0, 0.01, "Switch at", f"{name}_refiner_switch_at", scale=2,
                    info="fraction of the denoising done before it takes over; 1: never")


def _inpaint_inputs(f: dict[str, Any]) -> None:
    f["inpaint_source"] = gr.Radio(list(INPAINT_SOURCES), value=DEFAULT["inpaint_source"], label="Mask",
                                   elem_id="inpaint_source")
    with gr.Group(visible=True) as paint_group:
        f["editor"] = gr.ImageEditor(
            label="Image — paint over what to repaint", type="pil", image_mode="RGBA", height=420,
            sources=["upload", "clipboard"], layers=False, transforms=(),
            brush=gr.Brush(default_size=24, colors=[MASK_BRUSH], default_color=MASK_BRUSH, color_mode="fixed"),
            eraser=gr.Eraser(default_size=24), elem_id="inpaint_editor",
        )
    with gr.Group(visible=False) as upload_group:
        with gr.Row():
            f["inpaint_image"] = picture_input(label="Image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                          elem_id="inpaint_image", height=300)
            f["inpaint_mask"] = picture_input(label="Mask (white = repaint)", type="pil", image_mode=None,
                                         sources=["upload", "clipboard"], elem_id="inpaint_mask", height=300)
    f["inpaint_source"].change(mask_source_groups, inputs=[f["inpaint_source"]], outputs=[paint_group, upload_group],
                               concurrency_limit=None, show_progress="hidden")
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=DEFAULT["resize_mode"], label="Resize mode",
                                elem_id="inpaint_resize_mode")


def _inpaint_options(f: dict[str, Any]) -> None:
    with gr.Accordion("Inpainting", open=True, elem_id="inpaint_options"):
        with gr.Row():
            _slider(f, "mask_blur", 0, 64, 1, "Mask blur", "inpaint_mask_blur")
            f["mask_mode"] = gr.Radio(list(MASK_MODES), value=DEFAULT["mask_mode"], label="Mask mode",
                                      elem_id="inpaint_mask_mode")
        f["inpainting_fill"] = gr.Radio(list(FILL_MODES), value=DEFAULT["inpainting_fill"], label="Masked content",
                                        elem_id="inpaint_fill")
        with gr.Row():
            f["inpaint_full_res"] = gr.Radio(list(INPAINT_AREAS), value=DEFAULT["inpaint_full_res"],
                                             label="Inpaint area",
                                             elem_id="inpaint_area")
            _slider(f, "inpaint_full_res_padding", 0, 256, 4, "Only masked padding, pixels", "inpaint_padding")
    with gr.Accordion("Outpainting", open=False, elem_id="outpaint_options"):
        with gr.Row():
            f["outpaint_directions"] = gr.CheckboxGroup(list(OUTPAINT_DIRECTIONS), value=DEFAULT["outpaint_directions"],
                                                        label="Grow the canvas towards", elem_id="outpaint_directions")
            _slider(f, "outpaint_pixels", 8, 512, 8, "Pixels to expand", "outpaint_pixels")


def _script_inputs(ui: StudioUI, f: dict[str, Any], name: str) -> None:
    """A1111's Script menu: None or one of core's scripts; a script's fields show only while it
    is chosen (form -> script_args: app/forms.py's script_from_form)."""
    from core.scripts import scripts
    from core.scripts.xyz_plot import axes_for

    img2img = name == "img2img"
    titles = [script.title for script in scripts() if img2img or not script.img2img_only]
    axes = [axis.label for axis in axes_for(img2img) if axis.apply is not None or axis.label == "Nothing"]
    f["script"] = gr.Dropdown(choices=[NO_SCRIPT, *titles], value=DEFAULT["script"], label="Script",
                              elem_id=f"{name}_script")
    groups = {}
    with gr.Column(visible=False, elem_id=f"{name}_script_xyz") as groups["X/Y/Z plot"]:
        for axis in ("x", "y", "z"):
            with gr.Row():
                f[f"xyz_{axis}_type"] = gr.Dropdown(choices=axes, value=DEFAULT[f"xyz_{axis}_type"],
                                                    label=f"{axis.upper()} type", elem_id=f"{name}_xyz_{axis}_type",
                                                    scale=1)
                f[f"xyz_{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", elem_id=f"{name}_xyz_{axis}_values",
                                                     placeholder="1, 2, 3 · 1-10 (+2) · 1-10 [5] · Euler, DDIM",
                                                     scale=3)
        with gr.Row():
            f["xyz_draw_legend"] = gr.Checkbox(DEFAULT["xyz_draw_legend"], label="Draw legend",
                                               elem_id=f"{name}_xyz_draw_legend")
            f["xyz_include_lone_images"] = gr.Checkbox(DEFAULT["xyz_include_lone_images"], label="Include Sub Images",
                                                       elem_id=f"{name}_xyz_include_lone_images")
            f["xyz_no_fixed_seeds"] = gr.Checkbox(DEFAULT["xyz_no_fixed_seeds"], label="Keep -1 for seeds",
                                                  elem_id=f"{name}_xyz_no_fixed_seeds")
        _slider(f, "xyz_margin_size", 0, 500, 2, "Grid margins (px)", f"{name}_xyz_margin_size")
    with gr.Column(visible=False, elem_id=f"{name}_script_matrix") as groups["Prompt matrix"]:
        with gr.Row():
            f["matrix_put_at_start"] = gr.Checkbox(DEFAULT["matrix_put_at_start"],
                                                   label="Put variable parts at start of prompt",
                                                   elem_id=f"{name}_matrix_put_at_start")
            f["matrix_different_seeds"] = gr.Checkbox(DEFAULT["matrix_different_seeds"],
                                                      label="Use different seed for each picture",
                                                      elem_id=f"{name}_matrix_different_seeds")
        with gr.Row():
            f["matrix_prompt_type"] = gr.Radio(["positive", "negative"], value=DEFAULT["matrix_prompt_type"],
                                               label="Select prompt", elem_id=f"{name}_matrix_prompt_type")
            f["matrix_delimiter"] = gr.Radio(["comma", "space"], value=DEFAULT["matrix_delimiter"],
                                             label="Select joining char", elem_id=f"{name}_matrix_delimiter")
        _slider(f, "matrix_margin_size", 0, 500, 2, "Grid margins (px)", f"{name}_matrix_margin_size")
    with gr.Column(visible=False, elem_id=f"{name}_script_prompts") as groups["Prompts from file or textbox"]:
        with gr.Row():
            f["pff_iterate"] = gr.Checkbox(DEFAULT["pff_iterate"], label="Iterate seed every line",
                                           elem_id=f"{name}_pff_iterate")
            f["pff_iterate_batch"] = gr.Checkbox(DEFAULT["pff_iterate_batch"],
                                                 label="Use same random seed for all lines",
                                                 elem_id=f"{name}_pff_iterate_batch")
            f["pff_position"] = gr.Radio(["start", "end"], value=DEFAULT["pff_position"],
                                         label="Insert prompts at the", elem_id=f"{name}_pff_position")
        f["pff_text"] = gr.Textbox(label="List of prompt inputs", lines=4, elem_id=f"{name}_pff_text",
                                   placeholder='one prompt a line, or --prompt "..." --negative_prompt "..." --steps 10')
    if img2img:
        with gr.Column(visible=False, elem_id=f"{name}_script_sd_upscale") as groups["SD upscale"]:
            gr.Markdown("Upscales the picture by the scale factor, then redraws it in tiles of the width x height "
                        "above")
            with gr.Row():
                _slider(f, "sdu_overlap", 0, 256, 16, "Tile overlap", f"{name}_sdu_overlap")
                _slider(f, "sdu_scale", 1.0, 4.0, 0.05, "Scale Factor", f"{name}_sdu_scale")
            upscalers = ui.models.upscalers()
            chosen = DEFAULT["sdu_upscaler"] if DEFAULT["sdu_upscaler"] in upscalers else next(iter(upscalers), None)
            f["sdu_upscaler"] = gr.Radio(upscalers, value=chosen, label="Upscaler", elem_id=f"{name}_sdu_upscaler")
    titles_shown = list(groups)
    f["script"].change(lambda title: [gr.update(visible=title == shown) for shown in titles_shown],
                       inputs=[f["script"]], outputs=[groups[t] for t in titles_shown], concurrency_limit=None,
                       show_progress="hidden")
