"""Web front-end of the studio (Gradio). All image generation lives in core/."""
