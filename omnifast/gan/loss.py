"""OmniAvatar's training losses on EG3D's schedule: the non-saturating GAN loss, lazy R1 on both
images, density regularisation, the geometry prior on the SDF correction, the control loss
through the discriminator's regression head, blur fade and the neural rendering resolution
schedule."""
import math

import torch
import torch.nn.functional as F

from ..geometry.cameras import LABEL_SIZE


def blur(images, sigma):
    """EG3D's blur of ``sigma`` pixels: the separable kernel ``2^-(x / sigma)^2`` for
    ``|x| <= floor(3 sigma)``, normalised, zero padding (``upfirdn2d.filter2d``)."""
    radius = math.floor(sigma * 3)
    if radius <= 0:
        return images
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp2(-(x / sigma).square())
    kernel = (kernel / kernel.sum()).to(images.dtype)
    c = images.shape[1]
    out = F.conv2d(images, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def resize(images, resolution):
    """EG3D's ``filtered_resizing``: antialiased bilinear."""
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def control_target(labels, n_shape):
    """What the discriminator's head regresses: the labels' expression and jaw (the FLAME
    parameters after the shape, without the neck)."""
    params = labels[:, LABEL_SIZE:]
    return torch.cat([params[:, n_shape:-6], params[:, -3:]], 1)


def geometry_prior(delta, prior_sdf, sigma):
    """Small SDF corrections, weighted more near the prior's surface: mean of
    ``(1 + exp(-|s| / sigma)) * delta^2``."""
    return ((1 + torch.exp(-prior_sdf.abs() / sigma)) * delta.square()).mean()


def run_discriminator(D, image, image_raw, c, blur_sigma):
    """EG3D's ``run_D``: the blur on the (super-resolved) image only; the raw image as it is."""
    return D(blur(image, blur_sigma), image_raw, c)


def generator_loss(fake_logits):
    """The non-saturating loss ``softplus(-D(G(z)))``, averaged."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(fake_logits, real_logits):
    """``softplus(D(G(z))) + softplus(-D(x))``, each averaged: ``(fake term, real term)``."""
    return discriminator_fake_loss(fake_logits), discriminator_real_loss(real_logits)


def discriminator_fake_loss(fake_logits):
    """D's loss on generated images, ``softplus(D(G(z)))``, averaged."""
    return F.softplus(fake_logits).mean()


def discriminator_real_loss(real_logits):
    """D's loss on real images, ``softplus(-D(x))``, averaged."""
    return F.softplus(-real_logits).mean()


def r1_penalty(D, image, image_raw, c, blur_sigma):
    """R1 on the real images: ``|d D / d image|^2 + |d D / d raw|^2`` per sample (EG3D's dual
    R1), through the same blur D sees."""
    image, image_raw = image.detach().requires_grad_(True), image_raw.detach().requires_grad_(True)
    logits, _ = run_discriminator(D, image, image_raw, c, blur_sigma)
    grads = torch.autograd.grad(logits.sum(), [image, image_raw], create_graph=True)
    return sum(g.square().sum([1, 2, 3]) for g in grads)


def control_loss(regressed, target):
    """The regression head's squared error against the labels' expression and jaw, averaged."""
    return (regressed - target).square().mean()


def density_regularisation(delta, delta_moved):
    """EG3D's density regularisation (L1) on the correction: ``mean |delta(x) - delta(x + eps)|``."""
    return (delta - delta_moved).abs().mean()
