"""Example extension: a <caption:text> prompt tag writes the text beside each saved image.

Copy this folder into extensions/ to use it: "a cat <caption:my cat Tom>" saves
00012-345.png and 00012-345.txt holding "my cat Tom", and the infotext gains
"Caption: my cat Tom".
"""
from pathlib import Path


def setup(api):
    captions = {}  # job id -> caption text

    def on_caption(job, tags):
        if not tags:
            return None
        text = ":".join([tags[0].name, *tags[0].args])
        captions[id(job)] = text
        return {"Caption": text}  # infotext fields

    def write_caption(job, result):
        text = captions.get(id(job))
        if text is not None and result.path is not None:
            Path(result.path).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")

    def forget(job, results):
        captions.pop(id(job), None)

    api.on_extra_network("caption", on_caption)
    api.on("after_image_saved", write_caption)
    api.on("after_job", forget)
    api.add_setting("captions_enabled", True, "Write caption files")
