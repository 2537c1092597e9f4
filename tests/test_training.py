"""The demo model's own training code (core/training): the data generator and its analyser,
each trainer (loss goes down, resume continues where it stopped), the SD 1.x single-file
export through the real loader and Engine, and the kohya LoRA file format.

Everything runs on tiny configurations so the file stays well under a minute on a CPU."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.models.clip import TextEncoderConfig
from core.models.detection import TEXT, UNET, VAE
from core.models.unet import UNetConfig
from core.models.vae import VAEConfig
from core.training import analyser as A
from core.training import shapes as S
from core.training.common import demo_spec, run_loop
from tiny_models import REFERENCE_DIR

REFERENCE = REFERENCE_DIR / "lora_kohya_sd15.json"
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1)  # f=2
TINY_UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
                       transformer_depth_middle=1, context_dim=32, num_heads=2)
TINY_TEXT = TextEncoderConfig(hidden_size=32, intermediate_size=64, num_layers=1)


def quiet(_message):
    pass


def adam_losses(params, lr: float, steps: int, compute_loss) -> list[float]:
    """Train ``params`` with Adam for ``steps`` steps of ``compute_loss()``; the loss at each step."""
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = compute_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- data and analyser ----------------------------------------------------------------------

def test_generator_is_deterministic():
    a = [S.render(S.scene_at(S.TRAIN_SEED, i)) for i in range(20)]
    b = [S.render(S.scene_at(S.TRAIN_SEED, i)) for i in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(S.render(S.scene_at(S.TRAIN_SEED, 0)), S.render(S.scene_at(S.HELDOUT_SEED, 0)))
    batch = S.make_batch(S.TRAIN_SEED, range(4))
    assert batch.images.shape == (4, 3, 64, 64) and batch.images.min() >= -1 and batch.images.max() <= 1
    assert batch.captions == [S.caption(S.scene_at(S.TRAIN_SEED, i)) for i in range(4)]
    assert S.random_prompts(S.PROMPT_SEED, 5) == S.random_prompts(S.PROMPT_SEED, 5)


def test_captions_cover_the_vocabulary_and_parse_back():
    scenes = [S.scene_at(S.TRAIN_SEED, i) for i in range(600)]
    assert {s.colour for s in scenes} == set(S.COLOURS)
    assert {s.shape for s in scenes} == set(S.SHAPES)
    assert {s.size for s in scenes} == set(S.SIZES)
    assert {s.position for s in scenes} == set(S.POSITIONS)
    assert all(s.background != s.colour for s in scenes)
    for s in scenes[:50]:
        assert S.parse_caption(S.caption(s)) == s.attributes()
    assert S.caption(S.Scene("small", "red", "circle", "top left", "blue")) == "a small red circle at the top left on a blue background"
    with pytest.raises(ValueError):
        S.parse_caption("a photo of a cat")


@pytest.mark.parametrize("outlined", [False, True])
def test_analyser_reads_ground_truth_perfectly(outlined):
    count = 400
    scenes = [S.scene_at(S.HELDOUT_SEED, i, outlined) for i in range(count)]
    images = [S.render(s) for s in scenes]
    scores = A.score(images, [S.caption(s) for s in scenes])
    for attribute in (*A.ATTRIBUTES, "all", "found"):
        assert scores[attribute] == 1.0, (attribute, scores)
    if outlined:
        assert scores["hollowness"] > 0.6
    else:
        assert scores["hollowness"] == 0.0
    # Other input types: float CHW tensor in [0, 1] and a PIL image.
    from PIL import Image

    tensor = torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255
    assert A.analyse(tensor).attributes() == scenes[0].attributes()
    assert A.analyse(Image.fromarray(images[0])).attributes() == scenes[0].attributes()


def test_analyser_rejects_wrong_pictures():
    scene = S.Scene("large", "red", "square", "top left", "blue")
    image = S.render(scene)
    assert A.score([image], [S.caption(replace(scene, colour="green"))])["colour"] == 0.0
    assert A.score([image], [S.caption(replace(scene, shape="circle"))])["shape"] == 0.0
    assert A.score([image], [S.caption(replace(scene, size="small"))])["size"] == 0.0
    assert A.score([image], [S.caption(replace(scene, position="bottom right"))])["position"] == 0.0
    blank = np.full((64, 64, 3), 128, np.uint8)
    assert not A.analyse(blank).found
    assert A.score([blank], [S.caption(scene)])["all"] == 0.0


# --- trainers -------------------------------------------------------------------------------

def test_autoencoder_loss_goes_down_on_a_tiny_batch():
    from core.models.vae import AutoencoderKL
    from core.training.autoencoder import autoencoder_loss

    torch.manual_seed(0)
    vae = AutoencoderKL(TINY_VAE)
    batch = S.make_batch(S.TRAIN_SEED, range(4))
    losses = adam_losses(vae.parameters(), 2e-3, 12,
                         lambda: autoencoder_loss(vae, batch.images, batch.masks, torch.Generator().manual_seed(0))["loss"])
    assert losses[-1] < 0.8 * losses[0], losses


def test_edge_band_marks_both_sides_of_every_edge():
    from scipy import ndimage

    from core.training.autoencoder import edge_band

    batch = S.make_batch(S.TRAIN_SEED, range(6), outlined=False)
    outlined = S.make_batch(S.TRAIN_SEED, range(6), outlined=True)
    for images, scenes in ((batch.images, batch.scenes), (outlined.images, outlined.scenes)):
        band = edge_band(images)[:, 0].numpy() > 0.5
        for got, scene in zip(band, scenes):
            drawn = S.scene_mask(scene)
            square = np.ones((3, 3), bool)
            expected = ndimage.binary_dilation(drawn, square) & ~ndimage.binary_erosion(drawn, square, border_value=1)
            assert np.array_equal(got, expected)
            assert 0 < got.sum() < 0.2 * got.size


def test_mixed_batches_draw_the_same_scenes_partly_outlined():
    from core.training.autoencoder import mixed_batch

    indices = np.arange(8, 16)
    mixed = mixed_batch(S.TRAIN_SEED, indices, 0.25)
    filled = S.make_batch(S.TRAIN_SEED, indices)
    assert mixed.captions == filled.captions
    assert [s.outlined for s in mixed.scenes] == [True, True] + [False] * 6
    assert torch.equal(mixed.images[2:], filled.images[2:]) and not torch.equal(mixed.images[:2], filled.images[:2])
    assert torch.equal(mixed.masks, filled.masks)  # the filled silhouette weighs the loss either way
    assert torch.equal(mixed_batch(S.TRAIN_SEED, indices, 0.0).images, filled.images)


def test_cosine_learning_rate_warms_up_then_decays_to_the_floor():
    from core.training.common import LR_FLOOR, cosine_lr

    assert cosine_lr(1e-3, 0, 1000, warmup=50) == pytest.approx(1e-3 / 50)
    assert cosine_lr(1e-3, 500, None) == 1e-3
    assert cosine_lr(1e-3, 500, 1000) == pytest.approx(1e-3 * (LR_FLOOR + (1 - LR_FLOOR) / 2))
    assert cosine_lr(1e-3, 1000, 1000) == pytest.approx(1e-3 * LR_FLOOR)
    assert cosine_lr(1e-3, 5000, 1000) == pytest.approx(1e-3 * LR_FLOOR)
    rates = [cosine_lr(1e-3, s, 1000) for s in range(50, 1001, 50)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_high_noise_share_draws_from_the_noisier_half():
    from core.training.diffusion import sample_timesteps

    t = sample_timesteps(1000, 1000, 0.3, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 1000
    assert bool((t[:300] >= 500).all())
    assert 0.4 < float((t[300:] >= 500).float().mean()) < 0.6  # the rest stays uniform
    assert float((sample_timesteps(1000, 1000, 0.0, torch.Generator().manual_seed(0)) >= 500).float().mean()) < 0.6


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from core.training.autoencoder import AutoencoderTrainer

    run = tmp_path_factory.mktemp("vae-run")
    trainer = AutoencoderTrainer(run, config=TINY_VAE, batch=2, eval_count=8)
    run_loop(trainer, run, steps=2, minutes=None, save_every=1, eval_every=0, log=quiet)
    return run


def test_autoencoder_resumes_exactly(vae_run, tmp_path):
    from core.training.autoencoder import AutoencoderTrainer, load_autoencoder

    resumed = AutoencoderTrainer(vae_run, config=TINY_VAE, batch=2)
    assert resumed.step == 2 and resumed.history
    run_loop(resumed, vae_run, steps=3, minutes=None, save_every=0, eval_every=0, log=quiet)
    straight = AutoencoderTrainer(tmp_path / "straight", config=TINY_VAE, batch=2)
    run_loop(straight, tmp_path / "straight", steps=3, minutes=None, save_every=0, eval_every=0, log=quiet)
    assert AutoencoderTrainer(vae_run, config=TINY_VAE, batch=2).step == 3
    for (k, a), b in zip(resumed.vae.state_dict().items(), straight.vae.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-3), k  # same data and noise; kernels may round differently
    vae, scale = load_autoencoder(vae_run)
    assert scale > 0 and not any(p.requires_grad for p in vae.parameters())


def test_decoder_only_keeps_the_encoder(vae_run, tmp_path):
    import shutil

    from core.training.autoencoder import AutoencoderTrainer

    run = tmp_path / "decoder-only"
    shutil.copytree(vae_run, run)
    trainer = AutoencoderTrainer(run, config=TINY_VAE, batch=2, decoder_only=True, decay_steps=50)
    # The decoder phase restarts the learning-rate schedule where it begins.
    start = trainer.step
    assert start >= 2 and trainer.phase_start == start and trainer.decay_steps == 50
    before = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
    run_loop(trainer, run, steps=trainer.step + 1, minutes=None, save_every=0, eval_every=0, log=quiet)
    resumed = AutoencoderTrainer(run, config=TINY_VAE, batch=2)  # resumes in decoder-only mode, same schedule
    assert resumed.decoder_only and resumed.phase_start == start and resumed.decay_steps == 50
    after = resumed.vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_a_new_autoencoder_run_can_start_from_another_and_keeps_its_settings(vae_run, tmp_path):
    from core.training.autoencoder import AutoencoderTrainer, load_autoencoder

    deeper = replace(TINY_VAE, num_res_blocks=2)
    run = tmp_path / "fine-tune"
    trainer = AutoencoderTrainer(run, config=TINY_VAE, batch=4, init_from=vae_run, outlined_share=0.5, decay_steps=7)
    start, _ = load_autoencoder(vae_run)
    assert all(torch.equal(v, trainer.vae.state_dict()[k]) for k, v in start.state_dict().items())
    run_loop(trainer, run, steps=1, minutes=None, save_every=0, eval_every=0, log=quiet)
    # Resumed with other arguments, the run keeps its own architecture and schedule.
    resumed = AutoencoderTrainer(run, config=deeper, batch=4, outlined_share=0.0, decay_steps=None)
    assert resumed.config == TINY_VAE and resumed.outlined_share == 0.5 and resumed.decay_steps == 7 and resumed.step == 1


TINY_SPEC = demo_spec(1.0, unet=TINY_UNET, vae=TINY_VAE, text=TINY_TEXT)


@pytest.fixture(scope="module")
def diffusion_run(vae_run, tmp_path_factory):
    from core.training.diffusion import DiffusionTrainer

    run = tmp_path_factory.mktemp("diffusion-run")
    _, scale = __import__("core.training.autoencoder", fromlist=["x"]).load_autoencoder(vae_run)
    trainer = DiffusionTrainer(run, vae_run, batch=4, cache_size=16, eval_count=2, eval_steps=2, log=quiet,
                               spec=demo_spec(scale, unet=TINY_UNET, vae=TINY_VAE, text=TINY_TEXT))
    run_loop(trainer, run, steps=2, minutes=None, save_every=1, eval_every=2, log=quiet)
    assert trainer.evals and "colour" in trainer.evals[0]
    return run


def test_diffusion_loss_goes_down_on_a_tiny_batch(diffusion_run):
    from core.training.diffusion import Trainable, diffusion_loss, tokenize
    from core.models.stable_diffusion import LatentDiffusion

    torch.manual_seed(0)
    model = LatentDiffusion(TINY_SPEC)
    model.text_encoder.transformer.requires_grad_(True)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ids = tokenize(S.random_prompts(S.TRAIN_SEED, 4))
    losses = adam_losses(Trainable(model).parameters(), 2e-3, 10,
                         lambda: diffusion_loss(model, latents, ids, torch.Generator().manual_seed(2)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_diffusion_resumes_from_its_checkpoint(diffusion_run, vae_run):
    from core.training.diffusion import DiffusionTrainer

    trainer = DiffusionTrainer(diffusion_run, vae_run, batch=4, cache_size=16, log=quiet, spec=TINY_SPEC)
    assert trainer.step == 2 and len(trainer.evals) == 1
    before = {k: v.clone() for k, v in trainer.trainable.state_dict().items()}
    run_loop(trainer, diffusion_run, steps=3, minutes=None, save_every=0, eval_every=0, log=quiet)
    assert DiffusionTrainer(diffusion_run, vae_run, batch=4, cache_size=16, log=quiet, spec=TINY_SPEC).step == 3
    assert any(not torch.equal(before[k], v) for k, v in trainer.trainable.state_dict().items())
    # The cached latents and token ids are the generator's pictures and captions.
    cache = trainer.cache
    assert cache["captions"][:3] == [S.caption(S.scene_at(S.TRAIN_SEED, i)) for i in range(3)]
    assert cache["ids"].shape == (16, 77) and int(cache["ids"][0, 0]) == 49406


def test_a_diffusion_run_can_start_from_another(diffusion_run, vae_run, tmp_path):
    from core.training.common import load_checkpoint
    from core.training.diffusion import DiffusionTrainer

    trainer = DiffusionTrainer(tmp_path / "warm", vae_run, batch=4, cache_size=16, log=quiet, spec=TINY_SPEC,
                               init_from=diffusion_run, high_noise_share=0.5, decay_steps=10)
    ema = load_checkpoint(diffusion_run)["ema"]
    assert trainer.step == 0 and all(torch.equal(v, trainer.trainable.state_dict()[k]) for k, v in ema.items())
    run_loop(trainer, tmp_path / "warm", steps=1, minutes=None, save_every=0, eval_every=0, log=quiet)
    # Resumed with another --vae-run, it keeps the autoencoder its latents came from.
    resumed = DiffusionTrainer(tmp_path / "warm", tmp_path / "no-such-run", batch=4, cache_size=16, log=quiet, spec=TINY_SPEC)
    assert resumed.step == 1 and resumed.high_noise_share == 0.5 and resumed.decay_steps == 10
    assert resumed.vae_run == Path(vae_run)
    with pytest.raises(FileNotFoundError, match="no diffusion checkpoint"):
        DiffusionTrainer(tmp_path / "cold", vae_run, batch=4, cache_size=16, log=quiet, spec=TINY_SPEC, init_from=vae_run)


# --- export, loader, engine -----------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(diffusion_run, tmp_path_factory):
    from core.training.export import export_run

    folder = tmp_path_factory.mktemp("ckpt")
    return export_run(diffusion_run, folder / "demo-shapes.safetensors")


def test_export_is_an_sd1_single_file(exported):
    from core.loading import read_safetensors

    tensors, metadata = read_safetensors(exported)
    assert all(k.startswith((UNET, VAE, TEXT)) for k in tensors)
    assert {k.split(".")[0] for k in tensors} == {"model", "first_stage_model", "cond_stage_model"}
    assert all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())
    assert float(metadata["latent_scale_factor"]) > 0 and metadata["unet_num_heads"] == "2"
    assert not any("position_ids" in k for k in tensors)


def test_export_loads_and_the_engine_generates(exported, tmp_path):
    from core.engine import Engine
    from core.loading import load_model
    from core.params import GenerationParams

    model = load_model(exported)
    assert model.vae.config.downsample_factor == 2 and model.unet.config.num_heads == 2
    assert model.spec.text.hidden_size == 32
    engine = Engine(device="cpu", precision="fp32", ckpt_dir=exported.parent, output_dir=tmp_path / "out",
                    hash_cache=tmp_path / "hashes.json", extensions_dir=tmp_path / "no-extensions")
    params = GenerationParams(prompt="a small red circle at the top left on a blue background", width=64, height=64,
                              steps=3, cfg_scale=7.0, seed=5)
    [result] = engine.txt2img(params, save=False)
    assert result.image.size == (64, 64)
    assert "demo-shapes" in result.infotext
    A.analyse(result.image)  # any picture can be judged


def test_batched_generation_matches_cfg_one_path(exported):
    from core.loading import load_model
    from core.training.sampling import generate

    model = load_model(exported)
    images = generate(model, S.random_prompts(S.PROMPT_SEED, 3), cfg_scale=1.0, steps=2, seed=0)
    assert images.shape == (3, 3, 64, 64) and torch.isfinite(images).all()
    again = generate(model, S.random_prompts(S.PROMPT_SEED, 3), cfg_scale=1.0, steps=2, seed=0, batch=2)
    assert torch.allclose(images, again, atol=1e-4)


# --- LoRA -----------------------------------------------------------------------------------

@pytest.mark.skipif(not REFERENCE.is_file(), reason="kohya reference table not available")
def test_kohya_names_match_the_reference_for_sd15():
    from core.training.lora import kohya_name

    modules = json.loads(REFERENCE.read_text())["modules"]
    checked = 0
    for name, info in modules.items():
        if "default" not in info["variants"]:
            continue
        assert kohya_name(info["original_key"], UNetConfig()) == name
        checked += 1
    assert checked == 72 + 192


def test_lora_trains_exports_kohya_and_merges(exported, tmp_path):
    from core.loading import load_model, read_safetensors
    from core.training.diffusion import diffusion_loss, tokenize
    from core.training.lora import inject_lora, merge_kohya, save_kohya

    model = load_model(exported)
    reference = load_model(exported)
    modules = inject_lora(model, rank=4, alpha=2.0)
    # Tiny UNet: 4 transformers (1 down, 2 up, middle) x 12 targets; text encoder: 1 layer x 6.
    assert len(modules) == 4 * 12 + 6
    assert "lora_unet_down_blocks_1_attentions_0_proj_in" in modules
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k" in modules
    assert "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj" in modules
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in modules
    params = [p for m in modules.values() for p in (m.lora_down, m.lora_up)]
    for p in params:
        p.requires_grad_(True)
    latents = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = tokenize(S.random_prompts(S.TRAIN_SEED, 4))
    losses = adam_losses(params, 5e-3, 8, lambda: diffusion_loss(model, latents, ids, torch.Generator().manual_seed(4)))
    assert losses[-1] < losses[0], losses

    path = save_kohya(modules, tmp_path / "style.safetensors")
    tensors, metadata = read_safetensors(path)
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_network_dim"] == "4"
    names = {k.split(".", 1)[0] for k in tensors}
    assert names == set(modules)
    for name in names:
        assert name.startswith(("lora_unet_", "lora_te_")) and "." not in name
        down, up, alpha = (tensors[f"{name}.{s}"] for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert down.shape[0] == up.shape[1] == 4 and alpha.ndim == 0 and float(alpha) == 2.0
        assert down.ndim == up.ndim and down.ndim in (2, 4)
    assert len(tensors) == 3 * len(names)

    # Merged into a plain model, the file gives the wrapped model's outputs.
    assert merge_kohya(reference, path) == len(modules)
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([500.0])
    with torch.no_grad():
        ctx = model.text_encoder(ids[:1])
        ctx_ref = reference.text_encoder(ids[:1])
        assert torch.allclose(ctx, ctx_ref, atol=2e-2)
        out = model.unet(x, t, ctx)
        out_ref = reference.unet(x, t, ctx_ref)
    assert torch.allclose(out, out_ref, atol=5e-2), (out - out_ref).abs().max()
