"""SDXL base and refiner: loading from single files and diffusers folders, the two text encoders
and the added size/pooled vector, prompt language and embeddings per encoder, the refiner switch,
the fp16 VAE fallback, and parity with diffusers' StableDiffusionXLPipeline (float64)."""
import contextlib
import dataclasses
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import tiny_models
from diffusers_oracle import oracle_scheduler
from core.conditioning import CHUNK, SDXLConditioner, make_conditioner
from core.embeddings import EmbeddingDatabase
from core.engine import Engine
from core.loading import load_model
from core.models.detection import SDXL, SDXL_REFINER
from core.params import GenerationParams
from core.pipelines.common import decode_latents
from core.pipelines.sampling_run import Refiner, RefinerSwitch, sample_latents, sampler_and_sigmas
from core.sampling.schedules import DiscreteSchedule
from core.text.tokenizer import load_clip_tokenizer

PROMPT, NEGATIVE = "a red circle at the top left, masterpiece", "blurry, low quality"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return tiny_models.save_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    return tiny_models.save_sdxl(tmp_path_factory.mktemp("refiner"), "tiny-refiner", seed=1, refiner=True)


@pytest.fixture(scope="module")
def base(sdxl):
    return load_model(sdxl["safetensors"])


def tokens(text: str, pad_with_eos: bool = True) -> torch.Tensor:
    return torch.tensor([load_clip_tokenizer(pad_with_eos).encode_padded(text)])


def test_layouts_load_the_same_weights(sdxl, refiner, base):
    assert base.spec.family == SDXL and base.spec.default_size == 1024
    folder = load_model(sdxl["diffusers"])
    a, b = base.checkpoint_state_dict(), folder.checkpoint_state_dict()
    assert set(a) - set(b) == {"conditioner.embedders.1.model.logit_scale"}  # diffusers does not keep it
    for key in b:
        assert torch.equal(a[key], b[key]), key
    ckpt = load_model(sdxl["ckpt"]).checkpoint_state_dict()
    assert all(torch.equal(ckpt[k], a[k]) for k in a)
    for kind in ("safetensors", "diffusers"):
        model = load_model(refiner[kind])
        assert model.spec.family == SDXL_REFINER and len(model.text_encoders) == 1


def test_fp16_variant_file_names_in_folders(sdxl, base, tmp_path):
    folder = tmp_path / "variant"
    shutil.copytree(sdxl["diffusers"], folder)
    for part, name in (("unet", "diffusion_pytorch_model"), ("text_encoder_2", "model")):
        (folder / part / f"{name}.safetensors").rename(folder / part / f"{name}.fp16.safetensors")
    loaded = load_model(folder).checkpoint_state_dict()
    expected = base.checkpoint_state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in loaded)


def test_text_encoders_against_transformers(base):
    """CLIP-L: penultimate layer, no final norm; bigG: penultimate, no ln_final; pooled = ln_final
    of the last layer at the end-of-text token, times text_projection (diffusers' Linear.T)."""
    _, _, clip_l, bigg = tiny_models.sdxl_components(0)
    ids_l, ids_g = tokens(PROMPT), tokens(PROMPT, pad_with_eos=False)
    with torch.no_grad():
        first = base.text_encoders[0](ids_l)
        context, pooled = base.text_encoders[1].encode_with_pooled(ids_g)
        ref_l = clip_l(ids_l, output_hidden_states=True).hidden_states[-2]
        ref_g = bigg(ids_g, output_hidden_states=True)
    assert torch.allclose(first, ref_l, atol=1e-5)
    assert torch.allclose(context, ref_g.hidden_states[-2], atol=1e-5)
    assert torch.allclose(pooled, ref_g.text_embeds, atol=1e-5)
    assert pooled.shape == (1, tiny_models.SDXL_POOLED)


def test_added_vector_matches_diffusers_time_ids(base, refiner):
    """pooled + Fourier features of (h, w, crop top, crop left, h, w); the refiner's
    (h, w, crop top, crop left, aesthetic score), 6.0 for the prompt and 2.5 for the negative."""
    from diffusers.models.embeddings import Timesteps

    project = Timesteps(tiny_models.SDXL_TIME_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)
    conditioner = make_conditioner(base, load_clip_tokenizer())
    encoded = conditioner.encode(PROMPT)
    vector = conditioner.finish(encoded, (48, 64)).vector
    expected = torch.cat([encoded.pooled, project(torch.tensor([48.0, 64, 0, 0, 48, 64])).reshape(-1)])
    assert torch.allclose(vector, expected, atol=1e-6)
    assert vector.shape == (base.unet.config.adm_in_channels,)

    second = load_model(refiner["safetensors"])
    rc = make_conditioner(second, load_clip_tokenizer())
    encoded = rc.encode(PROMPT)
    for negative, score in ((False, 6.0), (True, 2.5)):
        vector = rc.finish(encoded, (48, 64), negative=negative).vector
        expected = torch.cat([encoded.pooled, project(torch.tensor([48.0, 64, 0, 0, score])).reshape(-1)])
        assert torch.allclose(vector, expected, atol=1e-6)
    assert vector.shape == (second.unet.config.adm_in_channels,)


def test_prompt_language_applies_per_encoder(base):
    c = make_conditioner(base, load_clip_tokenizer())
    assert isinstance(c, SDXLConditioner)
    plain, weighted = c.encode("a red cat"), c.encode("a (red:1.5) cat")
    width = base.spec.text.hidden_size
    assert plain.context.shape == (CHUNK + 2, width + base.spec.text2.hidden_size)
    red = 2  # after the start token and "a"
    for part in (slice(0, width), slice(width, None)):  # each encoder's half is weighted and renormalised
        assert not torch.allclose(weighted.context[red, part], plain.context[red, part])
    assert torch.allclose(c.parts[0].encode("a (red:1.5) cat"), weighted.context[:, :width])
    assert torch.equal(weighted.pooled, plain.pooled)  # the pooled vector is never weighted
    long = c.encode("cat " * 76)
    assert long.context.shape[0] == 2 * (CHUNK + 2)
    # From the first chunk. Within a tolerance: the two encodings run at different batch shapes, and
    # some CPUs (AVX-512) pick different kernels for them, so the last bits may differ.
    torch.testing.assert_close(long.pooled, c.encode("cat " * 75).pooled, rtol=1e-5, atol=1e-5)
    assert c.encode("a cat BREAK a dog").context.shape[0] == 2 * (CHUNK + 2)


def test_embeddings_use_clip_l_and_clip_g(base, tmp_path):
    tokenizer = load_clip_tokenizer()
    g = torch.Generator().manual_seed(3)
    clip_l = torch.randn(2, base.spec.text.hidden_size, generator=g)
    clip_g = torch.randn(2, base.spec.text2.hidden_size, generator=g)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, tmp_path / "xlstyle.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(1, base.spec.text.hidden_size)}}, tmp_path / "oldstyle.pt")
    db = EmbeddingDatabase(tmp_path, tokenizer, base.spec.text.hidden_size, key=base.spec.embedding_key)
    assert set(db.by_name) == {"xlstyle", "oldstyle"}  # both are 64 wide like CLIP-L
    c = make_conditioner(base, tokenizer, db)
    assert set(c.parts[0].embeddings.by_name) == set(c.parts[1].embeddings.by_name) == {"xlstyle"}  # no clip_g: skipped
    seen = []
    hooks = [e.transformer.embeddings.register_forward_hook(lambda m, i, o: seen.append(o)) for e in base.text_encoders]
    try:
        with_embedding = c.encode("a xlstyle cat")
    finally:
        for hook in hooks:
            hook.remove()
    for out, vectors, encoder in zip(seen, (clip_l, clip_g), base.text_encoders):
        position = encoder.transformer.embeddings.position_embedding.weight[2:4]
        assert torch.allclose(out[0, 2:4], vectors + position, atol=1e-5)
    assert not torch.allclose(with_embedding.context, make_conditioner(base, tokenizer).encode("a xlstyle cat").context)
    # The refiner's database holds the clip_g vectors.
    refiner_db = EmbeddingDatabase(tmp_path, tokenizer, base.spec.text2.hidden_size, key="clip_g")
    assert set(refiner_db.by_name) == {"xlstyle"} and torch.equal(refiner_db.by_name["xlstyle"].vectors, clip_g)


def diffusers_sdxl(sampler, steps, seed, width, height, negative, alphas_cumprod):
    from diffusers import StableDiffusionXLPipeline

    unet, vae, clip_l, bigg = (m.double() for m in tiny_models.sdxl_components(0))
    scheduler, extra = oracle_scheduler(sampler, steps, alphas_cumprod)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=clip_l, text_encoder_2=bigg, tokenizer=load_clip_tokenizer().hf,
        tokenizer_2=load_clip_tokenizer(pad_with_eos=False).hf, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(seed)).double()
    # negative_prompt=None: diffusers' force_zeros_for_empty_prompt, A1111's zeroed empty negative.
    return pipe(prompt=PROMPT, negative_prompt=negative or None, guidance_scale=7.0, width=width, height=height,
                latents=latents, output_type="latent", **extra).images


@pytest.mark.parametrize("sampler,negative", [("DDIM", NEGATIVE), ("Euler", "")])
def test_sdxl_latents_match_diffusers(sdxl, sampler, negative):
    ours = load_model(sdxl["safetensors"], dtype=torch.float64)
    params = GenerationParams(prompt=PROMPT, negative_prompt=negative, steps=6, cfg_scale=7.0, width=64, height=48, sampler=sampler)
    a = sample_latents(ours, make_conditioner(ours, load_clip_tokenizer()), params, [3])
    b = diffusers_sdxl(sampler, 6, 3, 64, 48, negative, ours.alphas_cumprod)
    assert a.dtype == torch.float64 and a.abs().mean() > 0.1
    # DDIM visits integer timesteps on both sides: 1e-4. diffusers' Euler turns its float32
    # sigmas into timesteps in float32 (about 1e-4 of a step near t=999); on these random-weight
    # latents (mean magnitude ~20) that leaves ~1e-4, so the bound scales with the latents.
    bound = 1e-4 if sampler == "DDIM" else 1e-5 * float(a.abs().mean())
    assert (a - b).abs().max() < bound


def test_engine_generates_with_sdxl_files_and_folders(sdxl, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(sdxl["safetensors"], models / "tiny-sdxl.safetensors")
    shutil.copytree(sdxl["diffusers"], models / "tiny-sdxl-diffusers")
    engine = Engine(device="cpu", ckpt_dir=models, output_dir=tmp_path / "out", hash_cache=tmp_path / "h.json")
    pictures = []
    for name in ("tiny-sdxl.safetensors", "tiny-sdxl-diffusers"):
        params = GenerationParams(prompt="a (red:1.2) cat", steps=3, width=64, height=64, seed=5, checkpoint=name)
        pictures.append(torch.tensor(list(engine.txt2img(params, save=False)[0].image.getdata())).float())
    assert pictures[0].std() > 1
    assert (pictures[0] - pictures[1]).abs().max() <= 1


@contextlib.contextmanager
def unet_calls(base_model, refiner_model):
    """Inside the block, "base" or "refiner" is appended to the list it yields for every call
    of that model's UNet."""
    calls = []
    hooks = [base_model.unet.register_forward_hook(lambda *a: calls.append("base")),
             refiner_model.unet.register_forward_hook(lambda *a: calls.append("refiner"))]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def refiner_split(schedule, sigmas, switch_at):
    """The index of the step in ``sigmas`` where the refiner takes over, by A1111's rule
    ((999 - t) / 1000 >= switch_at)."""
    probe = RefinerSwitch(None, None, switch_at, schedule, Refiner(None, None))
    return next(i for i, s in enumerate(sigmas[:-1]) if probe.done_fraction(s) >= switch_at)


def test_refiner_takes_over_at_the_switch_point(base, refiner):
    """Euler keeps no history, so a switched run equals the base model's first steps followed
    by the refiner's last steps, split where A1111's rule ((999 - t) / 1000 >= switch_at) says."""
    second = load_model(refiner["safetensors"])
    tokenizer = load_clip_tokenizer()
    params = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=6, width=48, height=48, sampler="Euler")
    stage = Refiner(second, make_conditioner(second, tokenizer), switch_at=0.5)
    with unet_calls(base, second) as calls:
        switched = sample_latents(base, make_conditioner(base, tokenizer), params, [2], refiner=stage)
    assert stage.used
    _, schedule, sigmas = sampler_and_sigmas(base, params, 6)
    split = refiner_split(schedule, sigmas, 0.5)
    assert calls == ["base"] * split + ["refiner"] * (6 - split)
    assert 0 < split < 6

    # The same run by hand: the base model on the first sigmas, then the refiner on the rest.
    from core.pipelines.guidance import build_guided_denoiser, prepare_prompt
    from core.sampling.denoiser import DiscreteDenoiser
    from core.sampling.samplers import SAMPLERS
    from core.sampling.noise import ImageNoise

    prepared = prepare_prompt(params.prompt, params.negative_prompt, 6)
    x = ImageNoise([2], (4, 6, 6)).first() * sigmas[0]
    for model, part in ((base, sigmas[: split + 1]), (second, sigmas[split:])):
        guided = build_guided_denoiser(DiscreteDenoiser(model.unet, DiscreteSchedule(model.alphas_cumprod), "eps"),
                                       make_conditioner(model, tokenizer), prepared, params.cfg_scale, (48, 48))
        x = SAMPLERS["Euler"].sample(guided, x, part)
    assert torch.allclose(switched, x, atol=1e-5)
    # switch_at 1: the refiner never runs.
    never = Refiner(second, make_conditioner(second, tokenizer), switch_at=1.0)
    sample_latents(base, make_conditioner(base, tokenizer), params, [2], refiner=never)
    assert not never.used


def test_fp16_vae_overflow_is_decoded_again_in_float32(sdxl):
    model = load_model(sdxl["safetensors"], dtype=torch.float16)
    with torch.no_grad():
        model.vae.decoder.conv_in.weight.mul_(3000)  # activations past fp16's 65504, fine in fp32
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.isfinite(model.vae.decode(latents.half())).all()
    images = decode_latents(model.vae, latents, tiled=False)
    assert torch.isfinite(images).all() and images.dtype == torch.float32


# ---------------------------------------------------------------- the refiner through the Engine


@pytest.fixture(scope="module")
def refiner_engine(sdxl, refiner, tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner-engine")
    models = root / "models"
    models.mkdir()
    shutil.copy(sdxl["safetensors"], models / "tiny-sdxl.safetensors")
    shutil.copy(refiner["safetensors"], models / "tiny-refiner.safetensors")
    (root / "no-extensions").mkdir()
    return Engine(device="cpu", ckpt_dir=models, output_dir=root / "out", hash_cache=root / "h.json",
                  extensions_dir=root / "no-extensions")


def pixels(result):
    return torch.tensor(list(result.image.getdata())).float()


def test_engine_refiner_takes_the_late_steps_and_is_recorded(refiner_engine):
    from core.hashing import HashCache
    from core.infotext import params_from_infotext, parse_infotext

    engine = refiner_engine
    plain = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=6, width=48, height=48, seed=4,
                             sampler="Euler", checkpoint="tiny-sdxl.safetensors")
    without = engine.txt2img(plain, save=False)[0]
    assert "Refiner" not in without.infotext and engine.refiner is None

    params = dataclasses.replace(plain, refiner_checkpoint="tiny-refiner.safetensors", refiner_switch_at=0.5)
    first = engine.txt2img(params, save=False)[0]
    cached = engine.refiner
    assert cached is not None and cached.model.spec.family == SDXL_REFINER
    with unet_calls(engine.loaded.model, engine.refiner.model) as calls:
        again = engine.txt2img(params, save=False)[0]
    assert engine.refiner is cached  # kept between jobs, not loaded again
    # Euler, 6 steps: the same split as the pipeline's own test (A1111's (999 - t) / 1000 >= 0.5).
    _, schedule, sigmas = sampler_and_sigmas(engine.loaded.model, plain, 6)
    split = refiner_split(schedule, sigmas, 0.5)
    assert 0 < split < 6 and calls == ["base"] * split + ["refiner"] * (6 - split)
    assert torch.equal(pixels(first), pixels(again))
    assert (pixels(first) - pixels(without)).abs().mean() > 1  # the refiner changed the picture

    short = HashCache(None).short(engine.ckpt_dir / "tiny-refiner.safetensors")
    fields = parse_infotext(first.infotext)
    assert fields["Refiner"] == f"tiny-refiner [{short}]" and fields["Refiner switch at"] == "0.5"
    assert first.infotext.endswith(f"Refiner: tiny-refiner [{short}], Refiner switch at: 0.5")
    # The infotext read back names the refiner by its title; the engine takes it and makes the same picture.
    back, rest = params_from_infotext(first.infotext)
    assert (back.refiner_checkpoint, back.refiner_switch_at, rest) == (f"tiny-refiner [{short}]", 0.5, {})
    back.checkpoint = "tiny-sdxl.safetensors"
    assert torch.equal(pixels(engine.txt2img(back, save=False)[0]), pixels(first))

    # switch_at 1: the refiner never runs, nothing is recorded, the picture is the plain one.
    never = engine.txt2img(dataclasses.replace(params, refiner_switch_at=1.0), save=False)[0]
    assert "Refiner" not in never.infotext and torch.equal(pixels(never), pixels(without))
    # a job without a refiner lets it go
    engine.txt2img(plain, save=False)
    assert engine.refiner is None


def test_engine_refiner_errors_name_the_field(refiner_engine, tmp_path):
    from core.errors import EngineError

    engine = refiner_engine
    base = GenerationParams(prompt="x", steps=2, width=32, height=32, seed=1, checkpoint="tiny-sdxl.safetensors")
    for name, words in (("nope.safetensors", "not found"), ("../outside.safetensors", "outside the checkpoint folder")):
        with pytest.raises(EngineError, match=rf"^refiner_checkpoint: .*{words}"):
            engine.txt2img(dataclasses.replace(base, refiner_checkpoint=name), save=False)
    with pytest.raises(EngineError, match="^refiner_switch_at: must be between 0 and 1"):
        engine.txt2img(dataclasses.replace(base, refiner_checkpoint="tiny-refiner.safetensors", refiner_switch_at=1.5),
                       save=False)
    picture = Image.new("RGB", (32, 32), (200, 30, 30))
    with pytest.raises(EngineError, match="^refiner_checkpoint: SD upscale takes no refiner"):
        engine.sd_upscale(dataclasses.replace(base, refiner_checkpoint="tiny-refiner.safetensors", width=32, height=32),
                          picture, scale=1.0, save=False)
    # the main checkpoint named as its own refiner: nothing to switch to (A1111 does the same)
    same = engine.txt2img(dataclasses.replace(base, refiner_checkpoint="tiny-sdxl.safetensors", refiner_switch_at=0.1),
                          save=False)[0]
    assert "Refiner" not in same.infotext


def test_engine_refiner_in_the_hires_second_pass(refiner_engine):
    engine = refiner_engine
    params = GenerationParams(prompt=PROMPT, steps=4, width=32, height=32, seed=3, sampler="Euler",
                              checkpoint="tiny-sdxl.safetensors", enable_hr=True, hr_scale=1.5,
                              denoising_strength=0.6, refiner_checkpoint="tiny-refiner.safetensors",
                              refiner_switch_at=0.8)
    engine.txt2img(params, save=False)  # loads both
    with unet_calls(engine.loaded.model, engine.refiner.model) as calls:
        result = engine.txt2img(params, save=False)[0]
    assert result.image.size == (48, 48)
    # The first pass is the base model's alone; the second (img2img from the last
    # int(4 * 0.6) + 1 noise levels) switches where (999 - t) / 1000 reaches 0.8.
    _, schedule, sigmas = sampler_and_sigmas(engine.loaded.model, params, 4)
    second = sigmas[len(sigmas) - int(0.6 * 4) - 2:]
    split = refiner_split(schedule, second, 0.8)
    assert 0 < split < len(second) - 1
    assert calls == ["base"] * (4 + split) + ["refiner"] * (len(second) - 1 - split)
    assert "Hires upscale: 1.5" in result.infotext and "Refiner switch at: 0.8" in result.infotext


def test_engine_refiner_waits_in_cpu_memory_while_the_base_samples(refiner_engine, monkeypatch):
    """With offloading (on by default on an accelerator), the model that is not sampling is
    moved to CPU memory: the base at the switch, back after the batch; the refiner the other way."""
    engine = refiner_engine
    params = GenerationParams(prompt="x", steps=3, width=32, height=32, seed=2, sampler="Euler",
                              checkpoint="tiny-sdxl.safetensors", refiner_checkpoint="tiny-refiner.safetensors",
                              refiner_switch_at=0.5, batch_count=2)
    engine.txt2img(dataclasses.replace(params, batch_count=1), save=False)
    moves = []
    for who, loaded in (("base", engine.loaded), ("refiner", engine.refiner)):
        original = loaded.model.to
        monkeypatch.setattr(loaded.model, "to", lambda device, who=who, original=original: moves.append((who, str(device)))
                            or original(device), raising=False)
    monkeypatch.setattr(engine, "refiner_offload", True)
    engine.txt2img(params, save=False)
    one = [("base", "cpu"), ("refiner", "cpu"), ("refiner", "cpu"), ("base", "cpu")]
    assert moves == one * 2  # per batch: at the switch, then home (the device is the CPU here)
    monkeypatch.setattr(engine, "refiner_offload", False)
    moves.clear()
    engine.txt2img(params, save=False)
    assert moves == []


def test_engine_refiner_in_img2img_and_inpainting(refiner_engine):
    """img2img: the refiner takes the late steps of the shortened schedule; inpainting keeps the
    unmasked pixels through the refiner's steps too."""
    engine = refiner_engine
    picture = Image.new("RGB", (48, 48), (200, 30, 30))
    picture.paste((20, 40, 220), (0, 0, 24, 48))
    base = GenerationParams(prompt=PROMPT, steps=8, width=48, height=48, seed=2, sampler="Euler",
                            denoising_strength=0.75, checkpoint="tiny-sdxl.safetensors")
    plain = engine.img2img(base, picture, save=False)[0]
    params = dataclasses.replace(base, refiner_checkpoint="tiny-refiner.safetensors", refiner_switch_at=0.6)
    engine.img2img(params, picture, save=False)  # loads the refiner
    with unet_calls(engine.loaded.model, engine.refiner.model) as calls:
        refined = engine.img2img(params, picture, save=False)[0]
    assert calls and calls[0] == "base" and calls[-1] == "refiner" and calls == sorted(calls)  # base, then refiner
    assert "Refiner: tiny-refiner [" in refined.infotext and "Denoising strength: 0.75" in refined.infotext
    assert (pixels(refined) - pixels(plain)).abs().mean() > 1

    mask = Image.new("L", (48, 48), 0)
    mask.paste(255, (24, 0, 48, 48))
    inpainted = engine.img2img(dataclasses.replace(params, mask_blur=0), picture, mask, save=False)[0]
    kept = np.asarray(inpainted.image)[:, :24]
    assert (kept == np.asarray(picture)[:, :24]).all() and "Refiner" in inpainted.infotext
