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

    results = engine.txt2img(GenerationParams(prompt="x", steps=30, width=64, height=64, batch_count=3, checkpoint="tiny.safetensors"), progress=progress, save=False)
    assert results == [] and steps_seen == [1, 2]


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
