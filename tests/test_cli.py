"""The headless command line: PNGs with correct infotext for txt2img, img2img, inpaint, hires fix."""
import hashlib
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from core.images import read_infotext

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run([sys.executable, "-m", "core", *args, "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_txt2img_writes_pngs_with_a1111_infotext(tiny_checkpoints, tmp_path):
    model = tiny_checkpoints["safetensors"]
    result = run("txt2img", "--model", str(model), "--prompt", "a red circle, (bold:1.2)", "--negative", "blurry",
                 "--steps", "5", "--cfg", "7.5", "--seed", "1", "--width", "64", "--height", "48",
                 "--sampler", "DPM++ 2M Karras", "--batch-count", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["00000-1.png", "00001-2.png"]
    model_hash = hashlib.sha256(model.read_bytes()).hexdigest()[:10]
    assert read_infotext(files[0]) == (
        "a red circle, (bold:1.2)\nNegative prompt: blurry\n"
        f"Steps: 5, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 64x48, Model hash: {model_hash}, Model: tiny"
    )
    assert Image.open(files[1]).size == (64, 48)
    assert [line.strip() for line in result.stdout.splitlines()] == [str(f) for f in files]


def test_txt2img_hires_fix(tiny_checkpoints, tmp_path):
    result = run("txt2img", "--model", str(tiny_checkpoints["safetensors"]), "--prompt", "x", "--steps", "3", "--seed", "4",
                 "--width", "64", "--height", "64", "--hires-scale", "1.5", "--hires-steps", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (file,) = tmp_path.glob("*.png")
    assert Image.open(file).size == (96, 96)
    info = read_infotext(file)
    assert "Denoising strength: 0.7" in info and "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent" in info


def test_img2img_and_inpaint(tiny_checkpoints, tmp_path):
    source = Image.new("RGB", (64, 64), (20, 120, 40))
    ImageDraw.Draw(source).ellipse((8, 8, 40, 40), fill=(240, 20, 20))
    source.save(tmp_path / "in.png")
    mask = Image.new("L", (32, 32), 0)  # another size than the picture: resized, with a note
    ImageDraw.Draw(mask).rectangle((16, 16, 31, 31), fill=255)
    mask.save(tmp_path / "mask.png")
    model = str(tiny_checkpoints["safetensors"])
    out1, out2 = tmp_path / "i2i", tmp_path / "inp"
    r1 = run("img2img", "--model", model, "--image", str(tmp_path / "in.png"), "--denoising-strength", "0.4",
             "--steps", "5", "--seed", "2", "--width", "64", "--height", "64", "--out", str(out1))
    assert r1.returncode == 0, r1.stderr
    assert "Denoising strength: 0.4" in read_infotext(next(out1.glob("*.png")))
    r2 = run("inpaint", "--model", model, "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
             "--mask-blur", "0", "--steps", "5", "--seed", "2", "--width", "64", "--height", "64", "--out", str(out2))
    assert r2.returncode == 0, r2.stderr
    assert "note: mask was 32x32, resized" in r2.stderr
    result = Image.open(next(out2.glob("*.png")))
    assert result.getpixel((5, 5)) == source.getpixel((5, 5))  # outside the mask: the input's pixel
    assert "Mask blur: 0, Masked content: original" in read_infotext(next(out2.glob("*.png")))


def test_bad_input_image_is_one_line(tiny_checkpoints, tmp_path):
    (tmp_path / "bad.png").write_text("nope")
    result = run("img2img", "--model", str(tiny_checkpoints["safetensors"]), "--image", str(tmp_path / "bad.png"),
                 "--width", "64", "--height", "64", "--out", str(tmp_path))
    assert result.returncode == 2 and "not a readable image" in result.stderr and "Traceback" not in result.stderr


def test_lora_tag_works_on_the_command_line(tiny_checkpoints, tmp_path):
    import torch
    from safetensors.torch import save_file

    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    # One kohya LoRA on the last output conv of the tiny UNet: lora_unet_conv_out is out.2 in LDM names.
    down, up = torch.randn(4, 32, 3, 3) * 0.5, torch.randn(4, 4, 1, 1) * 0.5
    save_file({"lora_unet_conv_out.lora_down.weight": down, "lora_unet_conv_out.lora_up.weight": up,
               "lora_unet_conv_out.alpha": torch.tensor(4.0)}, lora_dir / "bold.safetensors")
    model = str(tiny_checkpoints["safetensors"])
    common = ["--model", model, "--steps", "2", "--seed", "3", "--width", "64", "--height", "64", "--lora-dir", str(lora_dir)]
    plain = run("txt2img", *common, "--prompt", "a cat", "--out", str(tmp_path / "a"))
    styled = run("txt2img", *common, "--prompt", "a cat <lora:bold:1>", "--out", str(tmp_path / "b"))
    assert plain.returncode == 0 and styled.returncode == 0, styled.stderr
    a, b = next((tmp_path / "a").glob("*.png")), next((tmp_path / "b").glob("*.png"))
    assert Image.open(a).tobytes() != Image.open(b).tobytes()
    assert 'Lora hashes: "bold: ' in read_infotext(b)


def test_size_left_out_is_the_checkpoints_own(tiny_checkpoints, tmp_path):
    """A checkpoint whose metadata says it was trained at 32x32 (as the demo model says 64x64)."""
    from safetensors.torch import load_file, save_file

    small = tmp_path / "small.safetensors"
    save_file(load_file(tiny_checkpoints["safetensors"]), small, metadata={"modelspec.resolution": "32x32"})
    result = run("txt2img", "--model", str(small), "--prompt", "x", "--steps", "2", "--seed", "3", "--out", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    (made,) = (tmp_path / "a").glob("*.png")
    assert Image.open(made).size == (32, 32) and "Size: 32x32" in read_infotext(made)
    wide = run("txt2img", "--model", str(small), "--prompt", "x", "--steps", "2", "--width", "48", "--out", str(tmp_path / "b"))
    assert wide.returncode == 0, wide.stderr
    assert Image.open(next((tmp_path / "b").glob("*.png"))).size == (48, 32)
