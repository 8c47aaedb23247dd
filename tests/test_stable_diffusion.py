"""The Stable Diffusion family on a tiny random-weight pipeline built offline (no download)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from hopfield_replay.io.params_file import ParamsError, validate_config
from hopfield_replay.io.data import CIFAR10_CLASSES
from hopfield_replay.errors import UserError
from hopfield_replay.models import FAMILY_FILE, LatentDiffusion, TrainConfig, load_model, train_denoiser
from hopfield_replay.models.sd_settings import LoraSettings, SDSettings
from hopfield_replay.measures.reconstruction import denoising_energy, reconstruction_error
from hopfield_replay.models.tiny_sd import build_tiny_sd_pipeline, main
from tests.conftest import shipped_params

RES = 16  # tiny VAE: 2 blocks -> downsampling 2 -> latents (4, 8, 8)
NAMES = CIFAR10_CLASSES


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "tiny"
    build_tiny_sd_pipeline(path, resolution=RES, seed=0)
    return path


@pytest.fixture
def model(tiny):
    return LatentDiffusion.from_pipeline(str(tiny), class_names=NAMES)


def images(n=6, c=3, size=RES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, c, size, size), generator=g) * 2 - 1


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the tiny pipeline -----------------------------------------------------------------------------------------

def test_tiny_pipeline_round_trips_bit_identically(tmp_path):
    from diffusers import StableDiffusionPipeline

    built = build_tiny_sd_pipeline(tmp_path / "p", resolution=RES, seed=3)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "p", local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        assert same_state(state(getattr(built, name)), state(getattr(loaded, name))), name
    text = "a photo of a cat"
    assert built.tokenizer(text).input_ids == loaded.tokenizer(text).input_ids
    assert loaded.tokenizer.model_max_length == 77
    ids = loaded.tokenizer(text).input_ids
    assert ids[0] == loaded.tokenizer.bos_token_id and ids[-1] == loaded.tokenizer.eos_token_id
    assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == text


def test_cli_build_tiny(tmp_path, capsys):
    main(["build-tiny-sd", str(tmp_path / "cli"), "--resolution", "16"])
    assert (tmp_path / "cli" / "model_index.json").is_file()
    assert "tiny Stable Diffusion" in capsys.readouterr().out


# -- encode / decode / predict_noise -----------------------------------------------------------------------------

def test_loaded_model_is_frozen_where_it_should_be(model):
    assert model.family == "sd"
    assert model.scheduler.config.prediction_type == "epsilon"
    assert model.scheduler.config.beta_schedule == "scaled_linear"
    assert model.scheduler.config.num_train_timesteps == 1000
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not model.vae.training and not model.text_encoder.training
    n_unet = sum(p.numel() for p in model.unet.parameters())
    assert sum(p.numel() for p in model.trainable_parameters()) == n_unet
    assert model.resolution == RES and model.latent_shape == (4, RES // 2, RES // 2)


def test_encode_is_the_scaled_posterior_mean_and_deterministic(model):
    x = images(5)
    z = model.encode(x)
    assert z.shape == (5, 4, RES // 2, RES // 2) and z.dtype == torch.float32
    assert torch.equal(z, model.encode(x))
    with torch.no_grad():
        ref = model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-6)
    # batching does not change the latents
    model.settings.encode_batch_size = 2
    torch.testing.assert_close(model.encode(x), z, rtol=1e-5, atol=1e-6)


def test_encode_handles_grey_and_other_sizes(model):
    grey = images(3, c=1)
    torch.testing.assert_close(model.encode(grey), model.encode(grey.repeat(1, 3, 1, 1)))
    big = images(3, size=2 * RES)
    assert model.encode(big).shape == (3, 4, RES // 2, RES // 2)
    assert model.encode(images(0)).shape == (0, 4, RES // 2, RES // 2)
    with pytest.raises(ValueError, match="encode: images must be"):
        model.encode(torch.zeros(2, 2, RES, RES))


def test_decode_gives_pixels_at_model_resolution(model):
    out = model.decode(model.encode(images(4)))
    assert out.shape == (4, 3, RES, RES)
    assert out.min() >= -1 and out.max() <= 1


def test_predict_noise_uses_the_label_prompts(model):
    z = model.encode(images(4))
    t = torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        a = model.predict_noise(z, t, torch.tensor([0, 1, 2, 3]))
        b = model.predict_noise(z, t, torch.tensor([4, 5, 6, 7]))
        empty = model.predict_noise(z, t, None)
        again = model.predict_noise(z, t, torch.tensor([0, 1, 2, 3]))
    assert a.shape == z.shape
    assert torch.equal(a, again)
    assert not torch.allclose(a, b) and not torch.allclose(a, empty)
    assert model.prompts[3] == "a photo of a cat"
    with pytest.raises(UserError, match="label 10 has no prompt"):
        model.predict_noise(z, t, torch.tensor([0, 1, 2, 10]))


def test_labels_without_a_prompt_are_refused_before_training_or_measuring(model):
    """On a GPU the per-forward check is skipped (it would sync every step): the training loop and the
    measurements check every label once, up front, on any device."""
    z = model.encode(images(4))
    before = [p.detach().clone() for p in model.trainable_parameters()]
    with pytest.raises(UserError, match="label 10 has no prompt"):
        train_denoiser(model, z, TrainConfig(steps=2, batch_size=2), labels=torch.tensor([0, 1, 2, 10]),
                       progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.trainable_parameters()))  # no step was taken
    with pytest.raises(UserError, match="label -1 has no prompt"):
        reconstruction_error(model, z, [0, 1, 2, 3], [100], labels=torch.tensor([0, -1, 2, 3]), progress=False)


def test_empty_prompt_ignores_labels(tiny):
    m = LatentDiffusion.from_pipeline(str(tiny), prompt="empty")
    z = m.encode(images(2))
    t = torch.tensor([100, 700])
    with torch.no_grad():
        torch.testing.assert_close(m.predict_noise(z, t, torch.tensor([0, 9])), m.predict_noise(z, t, None))


# -- training, reconstruction, saving ---------------------------------------------------------------------------

def test_train_denoiser_trains_only_the_unet(model):
    z = model.encode(images(8))
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    unet0, vae0, text0 = state(model.unet), state(model.vae), state(model.text_encoder)
    losses = train_denoiser(
        model, z, TrainConfig(steps=3, batch_size=4, lr=1e-3), labels=labels,
        replay_x0=z[:2], replay_labels=labels[:2], progress=False,
    )
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not same_state(unet0, state(model.unet))
    assert same_state(vae0, state(model.vae)) and same_state(text0, state(model.text_encoder))
    assert not model.vae.training and not model.unet.training


def test_reconstruction_and_energy_run_on_latents(model):
    z = model.encode(images(4))
    labels = torch.tensor([0, 1, 2, 3])
    recon = reconstruction_error(model, z, [0, 1, 2, 3], [100, 500], labels=labels, progress=False)
    assert recon.shape == (4, 2) and torch.isfinite(recon).all()
    again = reconstruction_error(model, z, [0, 1, 2, 3], [100, 500], labels=labels, batch_size=3, progress=False)
    torch.testing.assert_close(recon, again, rtol=1e-5, atol=1e-6)
    energy = denoising_energy(model, z, [0, 1, 2, 3], [100, 500], labels=labels, progress=False)
    assert energy.shape == (4,) and torch.isfinite(energy).all()


def test_save_and_load_model_round_trip(model, tiny, tmp_path):
    z = model.encode(images(4))
    labels = torch.tensor([0, 5, 6, 9])
    train_denoiser(model, z, TrainConfig(steps=2, batch_size=4), labels=labels, progress=False)
    model.save_pretrained(tmp_path / "m")
    saved = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert saved == sorted([FAMILY_FILE, "scheduler", "unet"])  # the VAE and text encoder are referenced, not copied
    meta = json.loads((tmp_path / "m" / FAMILY_FILE).read_text())
    assert meta["family"] == "sd" and meta["pretrained"] == str(tiny) and meta["class_names"] == NAMES
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, LatentDiffusion)
    assert same_state(state(model.unet), state(loaded.unet))
    assert torch.equal(model.encode(images(2)), loaded.encode(images(2)))
    t = torch.tensor([3, 300, 600, 999])
    with torch.no_grad():
        assert torch.equal(model.predict_noise(z, t, labels), loaded.predict_noise(z, t, labels))
    assert torch.equal(model.alphas_cumprod(), loaded.alphas_cumprod())


def test_a_saved_model_samples_as_a_stable_diffusion_pipeline(model, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    model.save_pretrained(tmp_path / "m")
    pipe = load_model(tmp_path / "m").pipeline()
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert same_state(state(pipe.unet), state(model.unet))
    kwargs = dict(num_inference_steps=3, height=RES, width=RES, output_type="np", guidance_scale=1.0)
    a = pipe(NAMES[:2], generator=torch.Generator().manual_seed(0), **kwargs).images
    b = pipe(NAMES[:2], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert a.shape == (2, RES, RES, 3) and np.isfinite(a).all() and np.array_equal(a, b)


def test_lora_trains_only_the_adapter_and_round_trips(tiny, tmp_path):
    m = LatentDiffusion.from_pipeline(str(tiny), class_names=NAMES, lora=LoraSettings(rank=2, alpha=4.0),
                                      gradient_checkpointing=True)
    trainable = m.trainable_parameters()
    names = [n for n, p in m.unet.named_parameters() if p.requires_grad]
    assert trainable and names and all("lora_" in n for n in names)
    assert len(trainable) == len(names)
    torch.manual_seed(123)  # the adapter's initialisation does not depend on (or consume) the caller's RNG
    rng = torch.random.get_rng_state()
    twin = LatentDiffusion.from_pipeline(str(tiny), class_names=NAMES, lora=LoraSettings(rank=2, alpha=4.0))
    assert torch.equal(rng, torch.random.get_rng_state())
    assert same_state(state(m.unet), state(twin.unet))
    base0 = {k: v for k, v in state(m.unet).items() if "lora_" not in k}
    lora0 = {k: v for k, v in state(m.unet).items() if "lora_" in k}
    z = m.encode(images(8))
    labels = torch.arange(8) % 10
    losses = train_denoiser(m, z, TrainConfig(steps=3, batch_size=4, lr=1e-2), labels=labels, progress=False)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = state(m.unet)
    assert all(torch.equal(after[k], v) for k, v in base0.items())
    assert any(not torch.equal(after[k], v) for k, v in lora0.items())
    m.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "unet_lora").is_dir() and not (tmp_path / "lora" / "unet").exists()
    loaded = load_model(tmp_path / "lora")
    assert loaded.lora == LoraSettings(rank=2, alpha=4.0)
    assert same_state(after, state(loaded.unet))
    t = torch.tensor([5, 50, 500, 950, 1, 2, 3, 4])
    with torch.no_grad():
        assert torch.equal(m.eval().predict_noise(z, t, labels), loaded.predict_noise(z, t, labels))


# -- errors ------------------------------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match=r"model\.sd\.pretrained: .*nope does not exist"):
        LatentDiffusion.from_pipeline(str(tmp_path / "nope"), class_names=NAMES)


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(UserError, match="is not a Stable Diffusion pipeline folder"):
        LatentDiffusion.from_pipeline(str(tmp_path), class_names=NAMES)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(UserError, match="is not a Stable Diffusion pipeline folder.*missing or wrong: unet, vae"):
        LatentDiffusion.from_pipeline(str(tmp_path), class_names=NAMES)


def test_uncached_hub_id_is_not_downloaded():
    with pytest.raises(UserError, match="neither an existing local folder nor a repo in the local Hugging Face cache"):
        LatentDiffusion.from_pipeline("no-such-owner-xyz/no-such-model-xyz", revision="abc", class_names=NAMES)


def test_bad_resolution(tiny):
    with pytest.raises(UserError, match=r"model\.sd\.resolution: 15 cannot be taken by the VAE.*factor 2"):
        LatentDiffusion.from_pipeline(str(tiny), resolution=15, class_names=NAMES)


def test_template_without_class_and_missing_names(tiny):
    with pytest.raises(UserError, match=r"model\.sd\.prompt_template: 'a photo' has no \{class\} placeholder"):
        LatentDiffusion.from_pipeline(str(tiny), prompt_template="a photo", class_names=NAMES)
    with pytest.raises(UserError, match=r"model\.sd\.class_names: prompt 'class' needs class_names"):
        LatentDiffusion.from_pipeline(str(tiny))
    LatentDiffusion.from_pipeline(str(tiny), prompt="empty", prompt_template="no placeholder needed")


def test_v_prediction_is_refused(tiny, tmp_path):
    import shutil

    copy = tmp_path / "v"
    shutil.copytree(tiny, copy)
    cfg = copy / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "prediction_type": "v_prediction"}))
    with pytest.raises(UserError, match="epsilon prediction only"):
        LatentDiffusion.from_pipeline(str(copy), class_names=NAMES)


def sd_section(**values):
    """The ``model.sd`` section as the stages get it (the whole params mapping validated by config): the shipped
    one with ``values`` changed."""
    return validate_config(shipped_params(model={"sd": values})).model.sd


def test_sd_params():
    p = sd_section(pretrained="models/sd-v1-5", lora=True, lora_rank=8)
    assert p.local_files_only is True and p.lora_rank == 8 and p.prompt_template == "a photo of a {class}"
    with pytest.raises(ParamsError, match=r"model\.sd\.prompt_template: 'a photo' has no \{class\} placeholder"):
        sd_section(prompt_template="a photo")
    sd_section(prompt_template="a photo", prompt="empty")
    with pytest.raises(ParamsError, match=r"model\.sd\.resolution: .*multiple of 8"):
        sd_section(resolution=100)
    with pytest.raises(ParamsError, match=r"model\.sd\.prompt: .*'words'"):
        sd_section(prompt="words")
    with pytest.raises(ParamsError, match=r"model\.sd\.lora_ranks: unknown key"):
        sd_section(lora_ranks=4)


def test_settings_from_params_fill_nulls_and_round_trip():
    p = sd_section(lora=True, lora_rank=2, lora_alpha=3.0, lora_targets=["to_q"], resolution=16, variant="fp16")
    s = SDSettings.from_params(p, class_names=["a", "b"], pretrained="/models/x")
    assert s.pretrained == "/models/x" and s.class_names == ["a", "b"] and s.variant == "fp16"
    assert s.lora == LoraSettings(rank=2, alpha=3.0, target_modules=("to_q",)) and s.resolution == 16
    assert SDSettings.from_params(sd_section(), pretrained="/m").lora is None
    own = SDSettings.from_params(sd_section(pretrained="/own", class_names=["c"]), class_names=["a"], pretrained="/m")
    assert own.pretrained == "/own" and own.class_names == ["c"]  # params win over the fill-ins
    assert SDSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.prompts() == ["a photo of a a", "a photo of a b"]


def test_from_params(tiny):
    p = sd_section(lora=True, lora_rank=2, resolution=16)
    m = LatentDiffusion.from_params(p, class_names=NAMES, pretrained=str(tiny))
    assert m.lora == LoraSettings(rank=2) and m.resolution == 16 and m.prompts[0] == "a photo of a airplane"
    with pytest.raises(UserError, match=r"model\.sd\.pretrained: not set"):
        LatentDiffusion.from_params(sd_section(), class_names=NAMES)


def test_pixel_space_reconstruction_decodes_both_sides(model):
    from hopfield_replay.measures.noise import fixed_noise

    z = model.encode(images(3))
    ids, t = [4, 9, 2], 300
    latent = reconstruction_error(model, z, ids, [t], labels=torch.tensor([0, 1, 2]), seed=5, progress=False)
    pixel = reconstruction_error(model, z, ids, [t], labels=torch.tensor([0, 1, 2]), seed=5, progress=False,
                                 space="pixel")
    # Independent computation: the same fixed noise, one-step estimate, decoded, compared with the decoded sample.
    a = model.scheduler.alphas_cumprod[t].double()
    eps = fixed_noise(ids, t, tuple(z.shape[1:]), 5).double()
    x_t = a.sqrt() * z.double() + (1 - a).sqrt() * eps
    with torch.no_grad():
        pred = model.predict_noise(x_t.float(), torch.full((3,), t), torch.tensor([0, 1, 2])).double()
        x0_hat = (x_t - (1 - a).sqrt() * pred) / a.sqrt()
        expected = ((model.decode(x0_hat.float()) - model.decode(z)) ** 2).double().mean((1, 2, 3))
    torch.testing.assert_close(pixel[:, 0].double(), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(pixel, latent)
    with pytest.raises(ValueError, match="space='latent'"):
        reconstruction_error(model, z, ids, [t], space="latent", progress=False)


def test_weights_are_never_loaded_from_pickles(tiny, tmp_path):
    """A pipeline whose VAE weights are a pickle (.bin) is refused in one line, and the pickle is never opened."""
    import shutil

    from diffusers import AutoencoderKL

    copy = tmp_path / "tiny-bin"
    shutil.copytree(tiny, copy)
    vae = AutoencoderKL.from_pretrained(copy / "vae")
    for f in (copy / "vae").glob("*.safetensors"):
        f.unlink()
    vae.save_pretrained(copy / "vae", safe_serialization=False)
    assert list((copy / "vae").glob("*.bin"))
    with pytest.raises(UserError, match=r"could not load its vae .*weights as \.safetensors \(never loaded from pickles"):
        LatentDiffusion.from_pipeline(str(copy), class_names=NAMES)
