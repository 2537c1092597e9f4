"""img2img, inpainting, outpainting and hires fix on the tiny models and synthetic pictures."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.engine import Engine
from core.errors import EngineError
from core.params import GenerationParams
from core.pipelines.masking import masked_region, outpaint_canvas, resize_image


@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tiny_inpaint_checkpoint, tmp_path_factory):
    import shutil

    ckpts = tmp_path_factory.mktemp("ckpts")
    shutil.copy(tiny_checkpoints["safetensors"], ckpts / "tiny.safetensors")
    shutil.copy(tiny_inpaint_checkpoint, ckpts / "tiny-inpainting.safetensors")
    out = tmp_path_factory.mktemp("outputs")
    return Engine(device="cpu", ckpt_dir=ckpts, output_dir=out, hash_cache=out / "hashes.json")


def picture(width=64, height=64):
    image = Image.new("RGB", (width, height), (30, 60, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 12, 40, 44), fill=(220, 40, 30))
    draw.rectangle((44, 4, 60, 20), fill=(250, 250, 40))
    return image


def params(**kwargs):
    base = dict(prompt="a red circle", negative_prompt="", steps=8, width=64, height=64, seed=3, checkpoint="tiny.safetensors")
    return GenerationParams(**{**base, **kwargs})


def arr(image):
    return np.asarray(image, dtype=np.int16)


def test_strength_zero_is_the_input_through_the_autoencoder(engine):
    from core.pipelines.common import decode_latents, to_pil
    from core.pipelines.img2img import encode, to_tensor

    result = engine.img2img(params(denoising_strength=0.0), picture(), save=False)[0]
    model = engine.loaded.model
    expected = to_pil(decode_latents(model.vae, encode(model, to_tensor(picture()))))[0]
    assert np.array_equal(arr(result.image), arr(expected))
    assert "Denoising strength: 0" in result.infotext


def test_higher_strength_moves_further_from_the_input(engine):
    base = arr(engine.img2img(params(denoising_strength=0.0), picture(), save=False)[0].image)
    distances = []
    for strength in (0.1, 0.3, 0.5, 0.7, 1.0):
        out = arr(engine.img2img(params(denoising_strength=strength, steps=20), picture(), save=False)[0].image)
        distances.append(np.abs(out - base).mean())
    # A random tiny model wrecks a picture fast, so distances are large early; they must still grow.
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_resize_modes_keep_the_working_size(engine):
    wide = picture(96, 48)
    for mode in (0, 1, 2, 3):
        result = engine.img2img(params(resize_mode=mode, denoising_strength=0.5), wide, save=False)[0]
        assert result.image.size == (64, 64)
    crop = resize_image(wide, 64, 64, 1)
    assert np.array_equal(arr(crop)[:, 0], arr(wide.resize((128, 64), Image.LANCZOS))[:, 32])  # centre crop
    fill = resize_image(wide, 64, 64, 2)
    # The picture sits in rows 16..47; the borders repeat its edge rows.
    assert (arr(fill)[:16] == arr(fill)[16]).all() and (arr(fill)[48:] == arr(fill)[47]).all()


def square_mask(box=(16, 16, 48, 48), size=(64, 64)):
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


@pytest.mark.parametrize("checkpoint", ["tiny.safetensors", "tiny-inpainting.safetensors"])
@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpainting_leaves_unmasked_pixels_bit_identical(engine, checkpoint, fill):
    source = picture()
    result = engine.img2img(params(checkpoint=checkpoint, inpainting_fill=fill, denoising_strength=0.9, mask_blur=4),
                            source, square_mask(), save=False)[0]
    out, src = arr(result.image), arr(source)
    from PIL import ImageFilter

    blurred = np.asarray(square_mask().filter(ImageFilter.GaussianBlur(4)))
    outside = blurred == 0
    assert outside.sum() > 1000
    assert np.array_equal(out[outside], src[outside])
    inside = np.asarray(square_mask()) == 255
    assert np.abs(out[inside] - src[inside]).mean() > 5  # the masked part was repainted
    assert "Mask blur: 4" in result.infotext


def test_inpaint_not_masked_inverts(engine):
    source = picture()
    result = engine.img2img(params(inpainting_mask_invert=1, mask_blur=0, denoising_strength=0.9), source, square_mask(), save=False)[0]
    inside = np.asarray(square_mask()) == 255
    assert np.array_equal(arr(result.image)[inside], arr(source)[inside])
    assert "Mask mode: Inpaint not masked" in result.infotext


def test_only_masked_works_on_a_crop_and_pastes_it_back(engine):
    source = picture(128, 128)
    mask = square_mask((90, 90, 110, 110), (128, 128))
    result = engine.img2img(params(inpaint_full_res=True, inpaint_full_res_padding=8, mask_blur=0, denoising_strength=1.0),
                            source, mask, save=False)[0]
    assert result.image.size == (128, 128)
    out, src = arr(result.image), arr(source)
    changed = np.argwhere(np.abs(out - src).sum(axis=2) > 0)
    assert changed.size
    (y1, x1), (y2, x2) = changed.min(axis=0), changed.max(axis=0)
    assert 90 <= x1 and x2 <= 110 and 90 <= y1 and y2 <= 110  # only the masked square changed
    assert masked_region(mask, 8, 64, 64) == (82, 82, 119, 119)
    assert "Inpaint area: Only masked" in result.infotext


def test_outpainting_grows_the_canvas(engine):
    source = picture()
    canvas = outpaint_canvas(source, 30, ("left", "down"), overlap=8)
    assert canvas.image.size == (64 + 32, 64 + 32)  # 30 rounded up to 32
    assert np.array_equal(arr(canvas.image)[:64, 32:], arr(source))
    result = engine.img2img(params(width=96, height=96, mask_blur=0, inpainting_fill=0, denoising_strength=1.0),
                            canvas.image, canvas.mask, save=False)[0]
    assert result.image.size == (96, 96)
    kept = np.asarray(canvas.mask) == 0
    assert np.array_equal(arr(result.image)[kept], arr(canvas.image)[kept])
    with pytest.raises(EngineError, match="outpaint directions"):
        outpaint_canvas(source, 8, ("sideways",))


def test_mask_of_another_size_is_resized_with_a_note(engine):
    result = engine.img2img(params(denoising_strength=0.5), picture(), square_mask(size=(32, 32)).resize((32, 32)), save=False)[0]
    assert any("resized" in note for note in result.notes)


def test_empty_mask_returns_the_input_and_says_so(engine):
    source = picture()
    result = engine.img2img(params(), source, Image.new("L", (64, 64), 0), save=False)[0]
    assert np.array_equal(arr(result.image), arr(source))
    assert any("empty" in note for note in result.notes)


def test_not_an_image_is_a_clear_error(engine, tmp_path):
    bogus = tmp_path / "upload.png"
    bogus.write_text("this is not a picture")
    with pytest.raises(EngineError, match="image: .*upload.png: not a readable image"):
        engine.img2img(params(), bogus)
    with pytest.raises(EngineError, match="mask: .*gone.png: no such file"):
        engine.img2img(params(), picture(), tmp_path / "gone.png")


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Latent (nearest-exact)"])
def test_hires_fix_doubles_the_size_and_records_it(engine, upscaler):
    result = engine.txt2img(params(enable_hr=True, hr_scale=2.0, hr_upscaler=upscaler, hr_second_pass_steps=4, denoising_strength=0.5), save=False)[0]
    assert result.image.size == (128, 128)
    for field in ("Hires upscale: 2", "Hires steps: 4", f"Hires upscaler: {upscaler}", "Denoising strength: 0.5"):
        assert field in result.infotext, field
    resized = engine.txt2img(params(enable_hr=True, hr_resize_x=96, hr_upscaler="Latent", denoising_strength=0.5), save=False)[0]
    assert resized.image.size == (96, 96) and "Hires resize: 96x96" in resized.infotext


def test_inpainting_checkpoint_txt2img_works(engine):
    result = engine.txt2img(params(checkpoint="tiny-inpainting.safetensors"), save=False)[0]
    assert arr(result.image).std() > 1


def test_sd_upscale_has_the_requested_size_and_no_seam(engine):
    source = picture(48, 48)
    result = engine.sd_upscale(params(denoising_strength=0.0, width=64), source, upscaler="Lanczos", scale=2.0, overlap=32, save=False)[0]
    assert result.image.size == (96, 96)
    assert "SD upscale upscaler: Lanczos" in result.infotext and "SD upscale overlap: 32" in result.infotext
    # Each tile went through the checkpoint (here: only its autoencoder), so the result is not
    # the plain Lanczos picture; the tile blending itself is tested in tests/test_upscaling.py.
    lanczos = arr(source.resize((96, 96), Image.LANCZOS))
    assert np.abs(arr(result.image) - lanczos).mean() > 1
    strong = engine.sd_upscale(params(denoising_strength=0.6, width=64), source, upscaler="Lanczos", scale=1.5, save=False)[0]
    assert strong.image.size == (72, 72)


# --- half-precision VAE overflow while encoding ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    import tiny_models

    return tiny_models.save_sdxl(tmp_path_factory.mktemp("sdxl-encode"))["safetensors"]


def overflowing_fp16_model(path):
    """The tiny SDXL checkpoint in float16 with the encoder's first convolution 30000 times larger
    (its largest output, 2.3 for the test picture, becomes about 69000): past fp16's 65504 (inf,
    then NaN after the group norm), finite in float32."""
    import torch

    from core.loading import load_model

    model = load_model(path, dtype=torch.float16)
    with torch.no_grad():
        model.vae.encoder.conv_in.weight.mul_(30000)
    return model


@pytest.mark.parametrize("tiled", [False, True])
def test_fp16_vae_overflow_on_encode_is_encoded_again_in_float32(tiny_sdxl, tiled):
    import copy

    import torch

    from core.pipelines.common import encode_pixels
    from core.pipelines.img2img import to_tensor

    model = overflowing_fp16_model(tiny_sdxl)
    image = to_tensor(picture())
    with torch.no_grad():
        assert not torch.isfinite(model.vae.encode(image)).all()  # the overflow is real
        reference_vae = copy.deepcopy(model.vae).float()  # the same weights in float32
        expected = (reference_vae.encode(image) if not tiled else encode_pixels(reference_vae, image, tiled=True)).float()
    assert torch.isfinite(expected).all() and expected.std() > 0.01  # not a constant

    notes = []
    latents = encode_pixels(model.vae, image, tiled=tiled, notes=notes)
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    assert model.vae.dtype == torch.float32  # kept in float32, as after a decode overflow
    assert notes == ["the VAE overflowed in float16 while encoding the picture; it was encoded again in float32 "
                     "(the VAE stays in float32 for this model)"]
    # Once in float32, nothing more to say.
    assert torch.equal(encode_pixels(model.vae, image, tiled=tiled, notes=notes), latents) and len(notes) == 1


def test_img2img_input_with_fp16_vae_overflow_is_finite_and_noted(tiny_sdxl):
    import torch

    from core.pipelines.img2img import prepare_input

    model = overflowing_fp16_model(tiny_sdxl)
    job = GenerationParams(prompt="a red circle", steps=2, width=64, height=64, denoising_strength=0.5)
    prepared = prepare_input(model, job, picture())
    assert prepared.init_latent.shape == (1, 4, 8, 8) and torch.isfinite(prepared.init_latent).all()
    assert any("overflowed in float16 while encoding" in note for note in prepared.notes)


def test_txt2img_grey_latent_for_inpainting_checkpoints_survives_an_fp16_overflow(tiny_sdxl):
    """txt2img with an inpainting checkpoint encodes a grey picture: the same retry applies."""
    import torch

    from core.pipelines.sampling_run import blank_inpainting_conditioning

    model = overflowing_fp16_model(tiny_sdxl)
    with torch.no_grad():
        model.vae.encoder.conv_in.bias.fill_(6e4)  # a grey (zero) picture overflows through the bias
        assert not torch.isfinite(model.vae.encode(torch.zeros(1, 3, 64, 64, dtype=torch.float16))).all()
    conditioning = blank_inpainting_conditioning(model, 2, 64, 64)
    assert torch.isfinite(conditioning).all() and conditioning.shape[:2] == (2, 5)
    assert model.vae.dtype == torch.float32
