"""OmniAvatar's training losses on EG3D's schedule: the non-saturating GAN loss, lazy R1 on both
images, density regularisation, the geometry prior on the SDF correction, the control loss
through the discriminator's regression head, blur fade and the neural rendering resolution
schedule."""
import math

import torch
import torch.nn.functional as F

from ..geometry.cameras import LABEL_SIZE


def blur(images, sigma):
    """Gaussian blur of ``sigma`` pixels (EG3D fades it out early in training)."""
    if sigma <= 0:
        return images
    radius = int(math.ceil(sigma * 2))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.conv2d(images, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)


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
    sigma_raw = blur_sigma * image_raw.shape[-1] / image.shape[-1]
    return D(blur(image, blur_sigma), blur(image_raw, sigma_raw), c)


def r1_penalty(D, image, image_raw, c, blur_sigma):
    """R1 on both images: ``|d D / d (image, raw)|^2`` summed per sample."""
    image, image_raw = image.detach().requires_grad_(True), image_raw.detach().requires_grad_(True)
    logits, _ = run_discriminator(D, image, image_raw, c, blur_sigma)
    grads = torch.autograd.grad(logits.sum(), [image, image_raw], create_graph=True)
    return sum(g.square().sum([1, 2, 3]) for g in grads)
