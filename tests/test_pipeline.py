"""Behaviour of `FactoryPipeline`: save/load round trips per sampler, class names, guidance, no remote code."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from federated_factory.client_data import prepare_client_data
from federated_factory.factory_config import build_scheduler, build_unet, preset
from federated_factory.factory_training import train_factory
from federated_factory.data import load_image_dataset
from federated_factory.errors import FactoryError
from federated_factory.pipeline import SAMPLERS, FactoryPipeline, make_scheduler

DIGITS = ["0", "1", "7"]




@pytest.fixture(scope="module")
def trained():
    """A 3-class factory (digits 0, 1, 7; 40 images each, 16×16 grayscale) with a null class for guidance."""
    mnist = load_image_dataset("mnist-5k", image_size=16, channels=1)
    labels = np.asarray(mnist["label"])
    rows = np.concatenate([np.flatnonzero(labels == int(d))[:40] for d in DIGITS])
    config = preset("tiny", image_size=16, channels=1, train_steps=60, cfg_dropout=0.2)
    data = prepare_client_data(mnist.select(rows), config)
    pipeline, _ = train_factory(data, config, progress=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, data


def untrained_pipeline(class_names=("a", "b"), null_class=False, seed=0) -> FactoryPipeline:
    config = preset("tiny", image_size=16, channels=1, cfg_dropout=0.1 if null_class else 0.0)
    torch.manual_seed(seed)
    pipe = FactoryPipeline(
        unet=build_unet(config, len(class_names)), scheduler=build_scheduler(config),
        class_names=list(class_names), null_class=null_class,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, classes, n=4, seed=0, steps=8, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe(classes, num_images=n, num_inference_steps=steps, generator=generator, output_type="np",
                **kwargs).images


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_save_and_reload_gives_identical_samples_for_each_sampler(trained, tmp_path, sampler):
    pipe, _ = trained
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    before = sample(pipe, ["0", "1", "7", "1"])
    pipe.save_pretrained(tmp_path, safe_serialization=True)

    loaded = FactoryPipeline.from_pretrained(tmp_path, use_safetensors=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is SAMPLERS[sampler][0]
    assert loaded.class_names == DIGITS and loaded.config.null_class is True
    after = sample(loaded, ["0", "1", "7", "1"])
    assert before.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(before, after)
    # the same generator seed gives the same images again; a different seed does not
    np.testing.assert_array_equal(after, sample(loaded, ["0", "1", "7", "1"]))
    assert not np.array_equal(after, sample(loaded, ["0", "1", "7", "1"], seed=1))


def test_loaded_weights_are_copied_out_of_the_file_mapping(tmp_path):
    """safetensors maps the file and diffusers would keep the mapped tensors as parameters, 4-byte aligned at their
    file offsets; batch-of-one kernels (MKL sgemv on AVX2) then sum in another order than for the saved pipeline's
    64-byte aligned tensors. The loader copies them into torch-allocated memory, so both compute alike."""
    pipe = untrained_pipeline()
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = FactoryPipeline.from_pretrained(tmp_path, use_safetensors=True)
    tensors = list(loaded.unet.parameters()) + list(loaded.unet.buffers())
    assert tensors
    misaligned = [t.shape for t in tensors if t.data_ptr() % 64]
    assert not misaligned, misaligned
    for ours, theirs in zip(pipe.unet.state_dict().values(), loaded.unet.state_dict().values()):
        assert torch.equal(ours, theirs)
    # one image at a time (the batch size at which the kernels differ): still the same samples, bit for bit
    loaded.set_progress_bar_config(disable=True)
    for name in ("a", "b"):
        np.testing.assert_array_equal(sample(pipe, name, n=1, seed=3), sample(loaded, name, n=1, seed=3))


def test_weights_are_saved_only_as_safetensors(tmp_path):
    untrained_pipeline().save_pretrained(tmp_path, safe_serialization=True)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"))], files
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "FactoryPipeline"
    assert index["class_names"] == ["a", "b"] and index["null_class"] is False


def test_two_class_names_are_not_mistaken_for_a_component(tmp_path):
    """A 2-element list in model_index.json looks like a [library, class] pair; the names must survive."""
    pipe = untrained_pipeline(class_names=("diffusers", "UNet2DModel"))
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = FactoryPipeline.from_pretrained(tmp_path, use_safetensors=True)
    assert loaded.class_names == ["diffusers", "UNet2DModel"]
    np.testing.assert_array_equal(sample(pipe, "diffusers", n=2), sample(loaded, "diffusers", n=2))


# --------------------------------------------------------------------------- classes


def test_unknown_class_name_raises_factory_error_naming_it(trained):
    pipe, _ = trained
    with pytest.raises(FactoryError, match="'cat'") as err:
        pipe("cat", num_images=1, num_inference_steps=2)
    assert "'0'" in str(err.value)  # and lists what the factory does hold
    with pytest.raises(FactoryError, match="'cat'"):
        pipe(["0", "cat"], num_images=2, num_inference_steps=2)
    with pytest.raises(FactoryError, match="out of range"):
        pipe(3, num_images=1, num_inference_steps=2)  # local ids are 0..2
    with pytest.raises(FactoryError, match="num_images=3"):
        pipe(["0", "1"], num_images=3, num_inference_steps=2)


def test_multi_class_factory_samples_by_name(trained):
    pipe, data = trained
    by_name = sample(pipe, ["0", "1", "7", "0"])
    by_id = sample(pipe, [0, 1, 2, 0])
    np.testing.assert_array_equal(by_name, by_id)  # names map to local ids in class_names order
    assert not np.array_equal(sample(pipe, "0"), sample(pipe, "1"))  # the label conditions the output

    # after 60 steps the samples are blurry, but a "0" already looks more like the mean training "0" than like
    # the mean "1", and vice versa (0 vs 1 is the pair with a wide margin at this budget: measured 0.029 vs
    # 0.043 and 0.019 vs 0.060 mean squared distance)
    means = {name: data.train_images[data.train_labels == i].astype(np.float32).mean(0) / 255.0
             for i, name in enumerate(data.class_names)}
    mean_sample = {name: sample(pipe, name, n=8, steps=20).transpose(0, 3, 1, 2).mean(0) for name in ("0", "1")}

    def dist(a, b):
        return float(((a - b) ** 2).mean())

    assert dist(mean_sample["0"], means["0"]) < dist(mean_sample["0"], means["1"])
    assert dist(mean_sample["1"], means["1"]) < dist(mean_sample["1"], means["0"])


def test_factory_declaring_wrong_number_of_class_names_is_rejected():
    config = preset("tiny", image_size=16, channels=1)
    with pytest.raises(FactoryError, match="3 class embeddings"):
        FactoryPipeline(unet=build_unet(config, 3), scheduler=build_scheduler(config), class_names=["a", "b"])


def test_unknown_sampler_raises():
    with pytest.raises(FactoryError, match="euler"):
        make_scheduler("euler", build_scheduler(preset("tiny")).config)


# --------------------------------------------------------------------------- guidance


def test_guidance_without_a_null_class_raises():
    pipe = untrained_pipeline(null_class=False)
    with pytest.raises(FactoryError, match="null class"):
        pipe("a", num_images=1, num_inference_steps=2, guidance_scale=3.0)
    assert sample(pipe, "a", n=1, steps=2, guidance_scale=1.0).shape == (1, 16, 16, 1)


def test_guidance_works_on_a_factory_trained_with_cfg_dropout(trained):
    pipe, _ = trained
    assert pipe.config.null_class and pipe.unet.config.num_class_embeds == len(DIGITS) + 1
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    plain = sample(pipe, ["0", "1"], n=2)
    guided = sample(pipe, ["0", "1"], n=2, guidance_scale=3.0)
    assert guided.shape == plain.shape and np.isfinite(guided).all()
    assert guided.min() >= 0.0 and guided.max() <= 1.0
    assert not np.array_equal(plain, guided)
    np.testing.assert_array_equal(guided, sample(pipe, ["0", "1"], n=2, guidance_scale=3.0))


# --------------------------------------------------------------------------- no code from the folder

MARKER_CODE = """
from pathlib import Path
Path({marker!r}).write_text("executed")
from diffusers import DiffusionPipeline, UNet2DModel


class FactoryPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler, class_names=None, null_class=False):
        super().__init__()


class UNet2DModel(UNet2DModel):
    pass
"""


def _plant_code(folder, marker):
    code = MARKER_CODE.format(marker=str(marker))
    for path in (folder / "pipeline.py", folder / "factory.py", folder / "unet" / "evil_unet.py"):
        path.write_text(code)


def _no_planted_modules() -> bool:
    return not any(name in sys.modules for name in ("pipeline", "factory", "evil_unet"))


def test_generic_loader_does_not_run_code_shipped_in_the_folder(tmp_path):
    folder, marker = tmp_path / "factory", tmp_path / "marker.txt"
    pipe = untrained_pipeline()
    pipe.save_pretrained(folder, safe_serialization=True)
    _plant_code(folder, marker)

    # diffusers' generic loader does not know FactoryPipeline and must not fall back to pipeline.py
    with pytest.raises((AttributeError, ValueError)):
        DiffusionPipeline.from_pretrained(folder)
    assert not marker.exists()

    # our class loads the weights and ignores the .py files
    loaded = FactoryPipeline.from_pretrained(folder, use_safetensors=True)
    assert type(loaded) is FactoryPipeline and type(loaded.unet).__module__.startswith("diffusers.")
    np.testing.assert_array_equal(sample(pipe, "a", n=1), sample(loaded, "a", n=1))
    assert not marker.exists() and _no_planted_modules()


@pytest.mark.parametrize("loader", [FactoryPipeline, DiffusionPipeline], ids=["FactoryPipeline", "DiffusionPipeline"])
@pytest.mark.parametrize("tamper", ["pipeline_class", "component_class"])
def test_model_index_pointing_at_folder_code_is_refused(tmp_path, loader, tamper):
    """A malicious repo can rewrite model_index.json to name its own module; loading must refuse, not run it."""
    folder, marker = tmp_path / "factory", tmp_path / "marker.txt"
    untrained_pipeline().save_pretrained(folder, safe_serialization=True)
    _plant_code(folder, marker)
    index = json.loads((folder / "model_index.json").read_text())
    if tamper == "pipeline_class":
        index["_class_name"] = ["pipeline", "FactoryPipeline"]
    else:
        index["unet"] = ["evil_unet", "UNet2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))

    with pytest.raises((AttributeError, ValueError)) as err:
        loader.from_pretrained(folder, use_safetensors=True)
    if loader is FactoryPipeline:  # the generic loader already fails on the unknown pipeline class
        assert err.type is ValueError and "trust_remote_code" in str(err.value)
    assert not marker.exists() and _no_planted_modules()
