"""The training loop on its device: on the CPU bitwise the loop it replaced (same draws, losses and weights), losses
read to the host only every ``log_every`` steps, checkpoints still bitwise with losses pending; on CUDA (``gpu``)
seeded device sampling and a bitwise resume. (The benchmark scripts run in tests/test_gpu_session.py.)"""

from __future__ import annotations

import re

import pytest
import torch

from hopfield_replay.models import CheckpointPolicy, PixelDDPM, TrainConfig, train_denoiser
from hopfield_replay.models.training import Checkpoint, sampling_generator
from tests.test_checkpoints import StopAfterSave, Stopped
from tests.test_diffusion import TINY, _weights

pytestmark = pytest.mark.usefixtures("one_thread")


def old_loop(model, x0, config: TrainConfig, labels=None, replay_x0=None, replay_labels=None) -> list[float]:
    """The loop as it was before the device work (commit 31b6283), on the CPU: one CPU generator seeded with
    config.seed after torch.manual_seed(config.seed), drawing indices, replay indices, timesteps, noise."""
    n_replay = int(round(config.replay_fraction * config.batch_size)) if replay_x0 is not None else 0
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    for _ in range(config.steps):
        idx = torch.randint(0, x0.shape[0], (config.batch_size - n_replay,), generator=gen)
        batch, y = x0[idx], (labels[idx] if labels is not None else None)
        if n_replay:
            ridx = torch.randint(0, replay_x0.shape[0], (n_replay,), generator=gen)
            batch = torch.cat([batch, replay_x0[ridx]])
            y = torch.cat([y, replay_labels[ridx]]) if y is not None else None
        t = torch.randint(0, model.scheduler.config.num_train_timesteps, (batch.shape[0],), generator=gen)
        noise = torch.randn(batch.shape, generator=gen)
        pred = model.predict_noise(model.scheduler.add_noise(batch, noise, t), t, y)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _model(cls=PixelDDPM):
    torch.manual_seed(0)
    base = PixelDDPM.from_config(TINY)
    return cls(base.unet, base.scheduler)


@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("log_every", [50, 7, 1])
def test_the_cpu_loop_is_bitwise_the_old_loop(replay, log_every):
    x, y = _data()
    rx, ry = _data(6, seed=1) if replay else (None, None)
    config = TrainConfig(steps=23, batch_size=8, lr=2e-3, seed=11, replay_fraction=0.25)
    old, new = _model(), _model()
    expected = old_loop(old, x, config, labels=y, replay_x0=rx, replay_labels=ry)
    losses = train_denoiser(new, x, config, labels=y, replay_x0=rx, replay_labels=ry, progress=False,
                            log_every=log_every)
    assert losses == expected and all(type(v) is float for v in losses)
    assert torch.equal(_weights(new), _weights(old))
    assert sampling_generator(torch.device("cpu"), 11).device.type == "cpu"


# -- losses are read to the host every log_every steps, not every step --------------------------------------

_READS = {"item", "__float__", "tolist", "cpu", "numpy", "__bool__", "__int__", "__index__", "__format__"}


class Watched(torch.Tensor):
    """A tensor that records every read of its values to the host (and how many forwards had run by then)."""

    reads: list[tuple[str, int]] = []
    forwards = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _READS:
            cls.reads.append((name, cls.forwards))
        return super().__torch_function__(func, types, args, kwargs or {})


class WatchedDDPM(PixelDDPM):
    def predict_noise(self, x_t, t, labels=None):
        Watched.forwards += 1
        return self.unet(x_t, t).sample.as_subclass(Watched)


@pytest.fixture
def watched():
    Watched.reads, Watched.forwards = [], 0
    yield Watched
    Watched.reads, Watched.forwards = [], 0


def test_losses_are_read_every_log_every_steps_and_at_the_end(watched):
    x, _ = _data()
    config = TrainConfig(steps=12, batch_size=8, seed=2)
    losses = train_denoiser(_model(WatchedDDPM), x, config, progress=False, log_every=5)
    assert [at for _, at in watched.reads] == [5, 10, 12]  # one read of the pending losses each time
    assert len(losses) == 12 and losses == old_loop(_model(), x, config)


def test_the_old_loop_read_every_step(watched):
    """The control: the same watch sees one host read per step in the loop this replaced."""
    x, _ = _data()
    old_loop(_model(WatchedDDPM), x, TrainConfig(steps=12, batch_size=8, seed=2))
    assert [at for _, at in watched.reads] == list(range(1, 13))


def test_the_progress_bar_shows_the_mean_of_the_last_50_losses(capsys):
    x, _ = _data()
    losses = train_denoiser(_model(), x, TrainConfig(steps=100, batch_size=4, seed=1), progress=True, desc="bar")
    shown = re.findall(r"loss=([0-9.]+)", capsys.readouterr().err)
    assert shown and shown[-1] == f"{sum(losses[50:]) / 50:.4f}"
    assert set(shown) <= {f"{sum(losses[:50]) / 50:.4f}", f"{sum(losses[50:]) / 50:.4f}"}


# -- checkpoints with losses pending --------------------------------------------------------------------------



def _resume_is_bitwise(tmp_path, device: torch.device, stop_at: int) -> None:
    x, y = _data()
    rx, ry = _data(6, seed=1)
    config = TrainConfig(steps=12, batch_size=8, seed=3)
    run = dict(labels=y, replay_x0=rx, replay_labels=ry, progress=False, device=device, log_every=5)
    reference = _model()
    ref_losses = train_denoiser(reference, x, config, **run)
    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=stop_at)
    with pytest.raises(Stopped):
        train_denoiser(_model(), x, config, checkpoint=StopAfterSave(policy, "run", "k", stop_at=stop_at), **run)
    saved = torch.load(tmp_path / "run-k.pt", weights_only=True)
    assert saved["step"] == stop_at and len(saved["losses"]) == stop_at  # the pending losses were read first
    assert saved["generator_device"] == device.type
    resumed = _model()
    losses = train_denoiser(resumed, x, config, checkpoint=Checkpoint(policy, "run", "k"), **run)
    assert losses == ref_losses
    assert torch.equal(_weights(resumed), _weights(reference))


def test_a_checkpoint_between_two_loss_reads_resumes_bitwise(tmp_path):
    _resume_is_bitwise(tmp_path, torch.device("cpu"), stop_at=7)


def test_a_checkpoint_drawn_on_another_device_is_not_resumed(tmp_path, capsys):
    x, _ = _data()
    config = TrainConfig(steps=6, batch_size=8, seed=3)
    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=3)
    with pytest.raises(Stopped):
        train_denoiser(_model(), x, config, progress=False, checkpoint=StopAfterSave(policy, "run", "k", stop_at=3))
    state = torch.load(tmp_path / "run-k.pt", weights_only=True)
    torch.save({**state, "generator_device": "cuda"}, tmp_path / "run-k.pt")
    capsys.readouterr()
    model = _model()
    losses = train_denoiser(model, x, config, progress=False, checkpoint=Checkpoint(policy, "run", "k"))
    assert "drew its batches on another device; starting from step 0" in capsys.readouterr().out
    reference = _model()
    assert losses == train_denoiser(reference, x, config, progress=False)
    assert torch.equal(_weights(model), _weights(reference))


def test_channels_last_trains_and_hands_the_model_back_contiguous():
    x, _ = _data()
    config = TrainConfig(steps=5, batch_size=8, seed=4)
    fast, plain = _model(), _model()
    a = train_denoiser(fast, x, config, progress=False, channels_last=True)
    b = train_denoiser(plain, x, config, progress=False)
    assert all(p.is_contiguous() for p in fast.unet.parameters())
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6)
    assert torch.allclose(_weights(fast), _weights(plain), atol=1e-5)


def test_cpu_bf16_autocast_runs_the_prediction_in_bf16_and_trains_the_same_method(monkeypatch):
    """cpu_bf16: the noise prediction runs under CPU bf16 autocast (its output is bf16), the loss stays fp32 and the
    weights fp32; the run is reproducible for a seed, differs from the fp32 run only by rounding, and without the
    flag the CPU trains in fp32 bit for bit as before."""
    x, _ = _data()
    config = TrainConfig(steps=5, batch_size=8, seed=4)
    dtypes = []
    real = PixelDDPM.predict_noise

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(PixelDDPM, "predict_noise", spy)
    fast, again, plain, plain_again = _model(), _model(), _model(), _model()
    a = train_denoiser(fast, x, config, progress=False, cpu_bf16=True)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    b = train_denoiser(plain, x, config, progress=False)
    assert set(dtypes) == {torch.float32}
    assert a == train_denoiser(again, x, config, progress=False, cpu_bf16=True)  # same seed, same bytes
    assert torch.equal(_weights(fast), _weights(again))
    assert b == train_denoiser(plain_again, x, config, progress=False)
    assert all(p.dtype == torch.float32 for p in fast.unet.parameters())
    assert a != b and torch.allclose(torch.tensor(a), torch.tensor(b), rtol=0.05)  # rounding, not another method
    assert not torch.equal(_weights(fast), _weights(plain))


@pytest.mark.slow
def test_a_compiled_run_trains_the_same_model_object(monkeypatch):
    """torch.compile of the noise prediction: the first loss is the eager one, later ones drift only by rounding,
    and the UNet keeps its class and state-dict names. The graph capture (dynamo and AOT autograd, what our wrapper
    exercises) runs for real; the inductor backend's C++ code generation, torch's own and 2 minutes on a CPU, is
    swapped for ``aot_eager``. The GPU session benchmarks the inductor path (benchmarks/bench_train.py)."""
    compiled_functions = []

    def compile_aot_eager(fn, **kwargs):
        compiled_functions.append(fn)
        return real_compile(fn, backend="aot_eager", **kwargs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    x, _ = _data()
    config = TrainConfig(steps=4, batch_size=8, seed=1)
    compiled, eager = _model(), _model()
    a = train_denoiser(compiled, x, config, progress=False, compile_unet=True)
    b = train_denoiser(eager, x, config, progress=False)
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a == pytest.approx(b, rel=0.05)
    assert len(compiled_functions) == 1  # the compiled run went through torch.compile, the eager one did not
    assert type(compiled.unet) is type(eager.unet)
    assert compiled.unet.state_dict().keys() == eager.unet.state_dict().keys()


# -- CUDA ----------------------------------------------------------------------------------------------------


@pytest.fixture
def deterministic_cudnn():
    """cuDNN may pick backward algorithms that sum in a varying order; the test is about the draws and the resume,
    so it asks cuDNN for its deterministic ones."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@pytest.mark.gpu
@pytest.mark.usefixtures("deterministic_cudnn")
def test_cuda_sampling_is_seeded_on_the_device():
    cuda = torch.device("cuda")
    assert sampling_generator(cuda, 0).device.type == "cuda"
    x, y = _data()
    config = TrainConfig(steps=20, batch_size=8, seed=5, replay_fraction=0.25)
    rx, ry = _data(6, seed=1)
    a, b, c = _model(), _model(), _model()
    la = train_denoiser(a, x, config, labels=y, replay_x0=rx, replay_labels=ry, device=cuda, progress=False)
    lb = train_denoiser(b, x, config, labels=y, replay_x0=rx, replay_labels=ry, device=cuda, progress=False)
    lc = train_denoiser(c, x, TrainConfig(steps=20, batch_size=8, seed=6), labels=y, device=cuda, progress=False)
    assert la == lb and torch.equal(_weights(a), _weights(b))
    assert la != lc


@pytest.mark.gpu
@pytest.mark.usefixtures("deterministic_cudnn")
def test_a_resumed_cuda_run_is_bitwise_the_uninterrupted_run(tmp_path):
    _resume_is_bitwise(tmp_path, torch.device("cuda"), stop_at=7)
