"""The engine end to end on the tiny model: every sampler, seeds, variation seeds, cancel."""
import threading

import numpy as np
import pytest

from core.engine import Engine
from core.images import read_infotext
from core.params import GenerationParams
from core.sampling.samplers import SAMPLERS


@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    return Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=out, hash_cache=out / "hashes.json")


def pixels(result):
    return np.asarray(result.image, dtype=np.int16)


def make(engine, save=False, **kwargs):
    base = dict(prompt="a red circle", negative_prompt="blurry", steps=4, width=64, height=64, seed=1, checkpoint="tiny.safetensors")
    return engine.txt2img(GenerationParams(**{**base, **kwargs}), save=save)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_makes_an_image(engine, sampler):
    result = make(engine, sampler=sampler, steps=5)[0]
    image = pixels(result)
    assert image.shape == (64, 64, 3) and image.std() > 1
    assert f"Sampler: {sampler}," in result.infotext


def test_same_seed_same_image_and_batch_seeds_count_up(engine):
    a = make(engine, seed=42)[0]
    b = make(engine, seed=42)[0]
    assert np.array_equal(pixels(a), pixels(b))
    batch = make(engine, seed=42, batch_size=2, batch_count=2)
    assert [r.seed for r in batch] == [42, 43, 44, 45]
    # A batch gives each image the picture its seed gives alone (up to batched-matmul rounding).
    assert np.abs(pixels(batch[0]) - pixels(a)).max() <= 2
    single_43 = make(engine, seed=43)[0]
    assert np.abs(pixels(batch[1]) - pixels(single_43)).max() <= 2
    assert np.abs(pixels(batch[1]) - pixels(a)).mean() > 5  # and a different one from seed 42


def test_old_combined_sampler_names_are_recorded_as_a1111_does(engine):
    result = make(engine, sampler="DPM++ 2M Karras")[0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in result.infotext
    same = make(engine, sampler="DPM++ 2M", scheduler="Karras")[0]
    assert np.array_equal(pixels(result), pixels(same))


def test_variation_seed(engine):
    plain = make(engine, seed=5)[0]
    zero = make(engine, seed=5, subseed=9, subseed_strength=0.0)[0]
    assert np.array_equal(pixels(plain), pixels(zero))
    varied = make(engine, seed=5, subseed=9, subseed_strength=0.3)[0]
    assert not np.array_equal(pixels(plain), pixels(varied))
    assert "Variation seed: 9, Variation seed strength: 0.3" in varied.infotext
    full = make(engine, seed=5, subseed=9, subseed_strength=1.0)[0]
    other_seed = make(engine, seed=9)[0]
    assert np.abs(pixels(full) - pixels(other_seed)).max() <= 1  # strength 1 = the variation seed's noise


def test_seed_resize_from_is_recorded(engine):
    result = make(engine, seed=5, seed_resize_from_w=48, seed_resize_from_h=48)[0]
    assert "Seed resize from: 48x48" in result.infotext


def test_interrupt_stops_within_one_step(engine):
    steps_seen = []

    def progress(p):
        steps_seen.append(p.step)
        if p.step == 2:
            engine.interrupt()

    results = engine.txt2img(GenerationParams(prompt="x", steps=30, width=64, height=64, batch_count=3, seed=12,
                                              checkpoint="tiny.safetensors"), progress=progress, save=True)
    assert steps_seen == [1, 2]
    # As A1111: the picture the interrupted batch had reached (step 2's denoised estimate) is
    # handed back, with its infotext, and not saved.
    [partial] = results
    assert partial.incomplete and partial.path is None and partial.seed == 12
    assert "Seed: 12" in partial.infotext and "Interrupted at step 2 of 30" in partial.notes[-1]
    assert pixels(partial).shape == (64, 64, 3) and pixels(partial).std() > 1
    assert not list(engine.output_dir.rglob("*-12.png"))


def test_an_interrupt_before_the_first_step_keeps_no_picture(engine):
    def progress(p):
        if p.batch == 0 and p.step == 2:
            engine.interrupt()

    results = engine.txt2img(GenerationParams(prompt="x", steps=2, width=64, height=64, batch_count=2,
                                              checkpoint="tiny.safetensors"), progress=progress, save=False)
    assert len(results) == 1 and not results[0].incomplete  # batch 1 finished; batch 2 never took a step


def test_skip_stops_only_the_current_batch(engine):
    def progress(p):
        if p.batch == 0 and p.step == 2:
            engine.skip()

    results = engine.txt2img(GenerationParams(prompt="x", steps=4, width=64, height=64, seed=7, batch_count=2, checkpoint="tiny.safetensors"), progress=progress, save=False)
    assert [r.seed for r in results] == [8]


def test_saved_files_carry_infotext_and_never_overwrite(engine):
    first = make(engine, save=True, seed=3)[0]
    second = make(engine, save=True, seed=3)[0]
    assert first.path != second.path and first.path.exists() and second.path.exists()
    assert first.path.name.endswith("-3.png") and first.path.parent.name.count("-") == 2  # DATE folder
    assert read_infotext(second.path) == second.infotext


def test_jobs_from_threads_run_one_at_a_time(engine):
    results = {}

    def job(seed):
        results[seed] = make(engine, seed=seed, steps=3)[0]

    threads = [threading.Thread(target=job, args=(s,)) for s in (11, 12, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [11, 12, 13]
    assert np.array_equal(pixels(results[12]), pixels(make(engine, seed=12, steps=3)[0]))


def count_encodings(monkeypatch) -> list[int]:
    """The chunk count of every prompt the text encoders encode from now on."""
    from core.conditioning import TextConditioner

    calls: list[int] = []
    original = TextConditioner.encode_chunks_with_pooled

    def counted(self, chunks):
        calls.append(len(chunks))
        return original(self, chunks)

    monkeypatch.setattr(TextConditioner, "encode_chunks_with_pooled", counted)
    return calls


def test_a_batch_count_of_three_encodes_each_prompt_once(tiny_checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "out"
    engine = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=out, hash_cache=out / "h.json")
    calls = count_encodings(monkeypatch)
    first = make(engine, prompt="a cached prompt", batch_count=3)
    assert len(first) == 3
    assert len(calls) == 2  # the prompt and the negative prompt, once for all three batches
    again = make(engine, prompt="a cached prompt", batch_count=1)
    assert len(calls) == 2  # the next job with the same prompts encodes nothing
    assert np.array_equal(pixels(again[0]), pixels(first[0]))
    make(engine, prompt="another prompt")
    assert len(calls) == 3  # a new prompt is encoded; the negative prompt still comes from the cache


def test_changed_text_encoder_weights_or_embeddings_encode_again(tiny_checkpoints, tmp_path, monkeypatch):
    """What a LoRA merge does to the text encoder (a weight written in place, or swapped for a
    new tensor) and a new embedding each make the cached encodings invalid."""
    import torch

    from core.embeddings import Embedding

    out = tmp_path / "out"
    engine = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=out, hash_cache=out / "h.json")
    calls = count_encodings(monkeypatch)
    before = make(engine, prompt="a red circle")
    assert len(calls) == 2
    weight = engine.loaded.model.text_encoder.transformer.embeddings.token_embedding.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.5)  # as LoRA's "copy" merge
    changed = make(engine, prompt="a red circle")
    assert len(calls) == 4
    assert not np.array_equal(pixels(changed[0]), pixels(before[0]))
    weight.data = original  # as LoRA's "swap" restore: another tensor
    restored = make(engine, prompt="a red circle")
    assert len(calls) == 6
    assert np.array_equal(pixels(restored[0]), pixels(before[0]))
    hidden = engine.loaded.model.spec.text.hidden_size
    engine.loaded.embeddings.add(Embedding("newthing", torch.zeros(1, hidden), None), engine.tokenizer)
    make(engine, prompt="a red circle")
    assert len(calls) == 8


def test_compile_without_a_compiler_runs_uncompiled_with_a_warning(tiny_checkpoints, tmp_path, monkeypatch, caplog):
    import core.speed

    monkeypatch.setattr(core.speed.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    out = tmp_path / "out"
    engine = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=out, hash_cache=out / "h.json",
                    compile=True)
    plain = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=out, hash_cache=out / "h.json")
    with caplog.at_level("WARNING", logger="core.speed"):
        image = make(engine)[0]
    assert "no C++ compiler found" in caplog.text and "running without compiling" in caplog.text
    assert engine.loaded.model.unet._compiled_call_impl is None
    assert np.array_equal(pixels(image), pixels(make(plain)[0]))


def test_compile_that_fails_falls_back_with_a_warning(monkeypatch, caplog):
    import torch

    import core.speed

    def broken(self, *args, **kwargs):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(core.speed, "compiler_problem", lambda device: None)
    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    layer = torch.nn.Linear(2, 2)
    with caplog.at_level("WARNING", logger="core.speed"):
        assert core.speed.compile_module(layer, torch.device("cpu")) is False
    assert "inductor exploded" in caplog.text
    assert layer(torch.ones(1, 2)).shape == (1, 2)


def test_channels_last_unet_computes_the_same_as_channels_first(tiny_checkpoints):
    """The layout the engine runs the UNet in on a CPU changes the speed, not the numbers."""
    import copy

    import torch

    from core.loading import load_model

    unet = load_model(tiny_checkpoints["safetensors"]).unet
    channels_last = copy.deepcopy(unet).use_memory_format(torch.channels_last)
    assert channels_last.memory_format == torch.channels_last and unet.memory_format == torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 6, generator=generator)
    context = torch.randn(2, 77, unet.config.context_dim, generator=generator)
    with torch.no_grad():
        expected = unet(x, torch.tensor([500.0, 20.0]), context)
        got = channels_last(x, torch.tensor([500.0, 20.0]), context)
    assert got.is_contiguous()
    assert (got - expected).abs().max() < 1e-5
