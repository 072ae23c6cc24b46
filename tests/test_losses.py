"""Every stage II loss term pinned by its value on a hand-computed example, EG3D's schedules by
their values, and the training step's signs, gains and intervals: a flipped sign, R1 on the
wrong images or a missing interval gain fails here."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_gan import config_for
from test_gan import stage_one as gan_stage_one  # noqa: F401  (a fixture)

from omnifast.gan import loss as L
from omnifast.gan.train import (
    GANConfig,
    GANRun,
    blur_sigma_at,
    ema_beta_at,
    nrr_at,
    swap_prob_at,
)


def test_gan_losses_by_value():
    logits = torch.tensor([0.0, math.log(3.0)])
    # softplus(-0) = ln 2, softplus(-ln 3) = ln(1 + 1/3)
    assert L.generator_loss(logits).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    fake, real = L.discriminator_loss(torch.tensor([math.log(3.0)]), torch.tensor([-math.log(3.0)]))
    assert fake.item() == pytest.approx(math.log(4)) and real.item() == pytest.approx(math.log(4))
    fake, real = L.discriminator_loss(torch.tensor([-math.log(3.0)]), torch.tensor([math.log(3.0)]))
    assert fake.item() == pytest.approx(math.log(4 / 3)) and real.item() == pytest.approx(math.log(4 / 3))


def test_regularisers_by_value():
    # (1 + exp(-|s| / sigma)) delta^2: weight 2 on the surface, ~1 far from it
    delta, prior = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1e6])
    assert L.geometry_prior(delta, prior, 0.05).item() == pytest.approx((2 * 1 + 1 * 4) / 2)
    assert L.density_regularisation(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])).item() == pytest.approx(0.75)
    assert L.control_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(2.5)
    labels = torch.cat([torch.zeros(1, 25), torch.arange(1.0, 13.0)[None]], 1)  # shape 3, expression 3, neck, jaw
    assert L.control_target(labels, 3).tolist() == [[4.0, 5.0, 6.0, 10.0, 11.0, 12.0]]


class LinearD(torch.nn.Module):
    """logits = <a, image> + <b, raw> per sample: R1 is |a|^2 + |b|^2 exactly."""

    def __init__(self, size, raw_size):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(3, size, size))
        self.b = torch.nn.Parameter(torch.randn(3, raw_size, raw_size))

    def forward(self, image, raw, c):
        logits = (image * self.a).sum([1, 2, 3]) + (raw * self.b).sum([1, 2, 3])
        return logits, None


def test_r1_differentiates_both_real_images_without_and_with_blur():
    D = LinearD(8, 4)
    image, raw, c = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.zeros(2, 25)
    r1 = L.r1_penalty(D, image, raw, c, 0.0)
    expected = (D.a.square().sum() + D.b.square().sum()).item()
    assert r1.shape == (2,) and torch.allclose(r1, torch.full((2,), expected))
    # Through the blur on the image (a linear map B): d<a, B x>/dx = B^T a; the raw is not blurred.
    blurred = L.r1_penalty(D, image, raw, c, 1.0)
    kernel = torch.exp2(-torch.arange(-3.0, 4.0).square())
    kernel = kernel / kernel.sum()
    full = torch.zeros(8, 8, 8, 8)  # the blur as a matrix on one channel: zero padding
    for y in range(8):
        for x in range(8):
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    if 0 <= y + dy < 8 and 0 <= x + dx < 8:
                        full[y, x, y + dy, x + dx] = kernel[dy + 3] * kernel[dx + 3]
    grad = torch.einsum("cyx,yxuv->cuv", D.a.detach(), full)
    assert torch.allclose(blurred, torch.full((2,), (grad.square().sum() + D.b.square().sum()).item()), rtol=1e-5)


def test_blur_is_eg3ds_kernel():
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1
    out = L.blur(impulse, 1.5)  # radius floor(4.5) = 4, taps 2^-(x / 1.5)^2
    taps = torch.exp2(-(torch.arange(-4.0, 5.0) / 1.5).square())
    taps = taps / taps.sum()
    assert torch.allclose(out[0, 0, 3:12, 3:12], taps[:, None] * taps[None, :], atol=1e-7)
    assert out[0, 0, :3].abs().max() == 0 and torch.equal(L.blur(impulse, 0.3), impulse)  # radius 0: none


def test_eg3ds_schedules_count_images():
    config = GANConfig(dataset="d", sdf_run="s", nrr_initial=64, nrr_final=128, nrr_fade_kimg=1000)
    assert [nrr_at(config, n) for n in (0, 500_000, 10 ** 7)] == [64, 96, 128]
    # Blur: sigma 10 faded over batch * 200 / 32 kimg, 6250 iterations at any batch.
    assert blur_sigma_at(config, 0, 32) == 10 and blur_sigma_at(config, 100_000, 32) == pytest.approx(5)
    assert blur_sigma_at(config, 6250 * 4, 4) == 0 and blur_sigma_at(config, 3125 * 4, 4) == pytest.approx(5)
    # The pose-conditioning swap: from 1 to 0.5 over 1000 kimg.
    assert [swap_prob_at(config, n) for n in (0, 500_000, 2_000_000)] == [1.0, 0.75, 0.5]
    # EMA: half-life batch * 10 / 32 kimg (312.5 iterations), at most 5 % of the images seen.
    assert ema_beta_at(config, 0, 2) == 0.0  # G_ema starts as G
    assert ema_beta_at(config, 1000, 2) == pytest.approx(0.5 ** (2 / 50))
    assert ema_beta_at(config, 10 ** 9, 32) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta_at(GANConfig(dataset="d", sdf_run="s", ema_kimg=1.0, ema_rampup=0), 0, 4) == \
        pytest.approx(0.5 ** (4 / 1000))


def _record_steps(run, monkeypatch):
    """Each optimiser step's parameters and gradients, in phase order."""
    steps, real_step = [], GANRun._step

    def step(self, optimizer, module):
        steps.append({n: (p.detach().clone(), p.grad.clone()) for n, p in module.named_parameters()
                      if p.grad is not None})
        return real_step(self, optimizer, module)

    monkeypatch.setattr(GANRun, "_step", step)
    return steps


def test_lazy_regularisers_are_their_own_steps_weighted_by_gamma_and_interval(gan_stage_one, monkeypatch):  # noqa: F811
    run = GANRun(config_for(gan_stage_one, r1_gamma=3.0, r1_interval=4, density_reg=0.5, density_reg_interval=2))
    # Stand-ins with known gradients: R1 = |bias of D's out|^2 per sample, the density
    # regulariser = |bias of G's decoder output|^2.
    monkeypatch.setattr(L, "r1_penalty", lambda D, *a: D.b4.out.bias.square().sum().expand(2))
    monkeypatch.setattr(GANRun, "_geometry_regularisers",
                        lambda self, *a: {"density_reg": self.G.decoder.output.bias.square().sum()})
    steps = _record_steps(run, monkeypatch)
    run.train_step()  # step 0: every phase
    assert len(steps) == 4  # G main, G reg, D main, D reg
    value, grad = steps[3]["b4.out.bias"]
    torch.testing.assert_close(grad, 3.0 / 2 * 4 * 2 * value)  # gamma / 2 * interval * d|b|^2
    assert set(steps[3]) == {"b4.out.bias"}  # R1's step holds R1's gradient only
    value, grad = steps[1]["decoder.output.bias"]
    torch.testing.assert_close(grad, 0.5 * 2 * 2 * value)  # weight * interval * d|b|^2
    run.train_step()  # step 1: no regulariser is due
    assert len(steps) == 6


def test_d_main_and_g_main_step_downhill_on_their_own_losses(gan_stage_one, monkeypatch):  # noqa: F811
    # A small step goes downhill on the loss it follows: a flipped sign would go uphill.
    run = GANRun(config_for(gan_stage_one, r1_gamma=0.0, density_reg=0.0, lr_g=1e-12, lr_d=1e-4, blur_sigma=0.0,
                            control=0.0, geometry_prior=0.0))
    g = torch.Generator().manual_seed(0)
    z, c, c_map = run.fake_inputs(g)
    real, real_c = run.real_batch()
    monkeypatch.setattr(GANRun, "fake_inputs", lambda self, g: (z, c, c_map))
    monkeypatch.setattr(GANRun, "real_batch", lambda self: (real, real_c))
    raw = L.resize(real, run.nrr())

    def logits():
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            fake = run.G(z, c, c_map=c_map, noise_mode="const")
            return run.D(fake["image"], fake["image_raw"], c)[0].mean(), run.D(real, raw, real_c)[0].mean()

    d_loss = lambda fake, real: sum(L.discriminator_loss(fake, real))  # noqa: E731
    fake0, real0 = logits()
    run.train_step()
    fake1, real1 = logits()
    assert d_loss(fake1, real1) < d_loss(fake0, real0)  # D's step (G did not move: lr 1e-12)
    run.opt_D.param_groups[0]["lr"] = 1e-12
    for group in run.opt_G.param_groups:
        group["lr"] = 1e-4
    run.train_step()
    fake2, _ = logits()
    assert L.generator_loss(fake2) < L.generator_loss(fake1)  # G's step, towards what D calls real
    assert fake2 > fake1


@pytest.mark.parametrize("activation", ["lrelu", "linear"])
def test_bias_act_is_eg3d_s_and_twice_differentiable(activation):
    from omnifast.gan.networks import bias_act

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    gain, clamp = 0.7, 0.5  # about a third of the values clamped

    def plain(x, b):
        y = x + b[None, :, None, None]
        if activation == "lrelu":
            y = F.leaky_relu(y, 0.2) * math.sqrt(2)
        return (y * gain).clamp(-clamp, clamp)

    fused = bias_act(x, b, gain, clamp, activation)
    torch.testing.assert_close(fused, plain(x, b), rtol=1e-15, atol=1e-15)
    assert 0.1 < float((fused.abs() == clamp).double().mean()) < 0.9
    w = torch.randn(fused.shape, dtype=torch.float64, generator=g)
    grads = [torch.autograd.grad((f * w).sum(), (x, b)) for f in (fused, plain(x, b))]
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15)
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act(x, b, gain, clamp, activation), (x, b))
