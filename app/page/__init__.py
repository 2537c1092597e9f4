"""The Gradio page. ``build.py`` composes it (``build_ui``); ``layout/`` lays out each tab;
one module per area holds what the events do (``generation``, ``models``, ``superres``,
``gallery``, ``styles_settings``), with what they share (``outputs``: folders and saving;
``uploads``: a job's pictures; ``messages``: what the page says), held by ``studio.StudioUI``."""
