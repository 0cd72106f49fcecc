"""Reference PyTorch models with every weight and BatchNorm statistic random, yet well behaved.

Default-initialised BatchNorm (mean 0, variance 1, weight 1, bias 0) hides layout bugs: a
transposed or permuted statistic changes nothing. But a network drawn blindly at random is a poor
witness too: deep random networks are chaotic (float32 round-off alone grows to tens of percent of
the logits of EfficientNetV2-L, in PyTorch against PyTorch in float64), and a random 1000-way
classifier ties its top classes far closer than bfloat16 resolves. `randomize` draws every tensor
at random, per channel, and shapes the draw so that the network behaves like a trained one:

- convolution kernels are spatially smooth (a random value per filter and input channel, times
  1 + 30 % noise per tap), as trained kernels are; white-noise kernels amplify round-off;
- the last BatchNorm of every residual block has small weights and biases, so the block starts
  close to the identity (as timm's `zero_init_last` does) and depth does not compound errors;
- running statistics are drawn around the actual statistics of each BatchNorm's input in eval
  mode: a random fraction of its mean, and the second moment about that, times a random factor
  per channel; set layer by layer during one eval pass over real photos, in execution order; the
  BatchNorm biases are positive on average, so that most units are active and the network is
  near the edge of chaos rather than amplifying round-off by a constant factor per layer;
- the classifier is random plus, for each photo, the centred features of its views added to the
  row of a class of its own: each photo gets a clear top-1 class, as a trained classifier
  gives it.

The resulting networks reproduce in float32 to about 2e-6 of the largest logit, and agree on
top-1 in bfloat16 for 97-100 % of the photos (every variant: docs/conversion.md).
"""

import numpy as np
import torch

SMOOTHNESS = 0.3  # relative per-tap noise of the convolution kernels
RESIDUAL_GAIN = 0.05  # weight and bias scale of the last BatchNorm of residual blocks
MEAN_FRACTION = (0.8, 1.0)  # running_mean ~ U(*MEAN_FRACTION) x the actual mean, per channel
BIAS = (1.0, 0.2)  # BatchNorm bias ~ N(mean, std): units mostly active, the network near-critical
TOP1_MARGIN = 8.0  # photo's own class logit raised by this many logit standard deviations


def _nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def randomize(model: torch.nn.Module, images_nhwc: np.ndarray, views: int = 1, seed: int = 0) -> torch.nn.Module:
    """Draws every weight and statistic of `model` at random (see the module docstring), in place.

    `images_nhwc`: the normalised photos the comparison will run on; they calibrate the
    statistics and give each photo its class. `views`: consecutive images that are views of one
    photo (`photos.sample_pixels(size, views)`) share a class; two classes of near-identical images,
    such as a photo and its mirror image, would tie.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the model's own initialisation, for the tensors drawn below
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]

    def uniform(shape, low, high):
        return torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=g)

    def calibrate(bn, inputs):
        x = inputs[0].double()
        running_mean = x.mean((0, 2, 3)) * uniform(bn.num_features, *MEAN_FRACTION)
        second = ((x - running_mean[None, :, None, None]) ** 2).mean((0, 2, 3))
        bn.running_mean.copy_(running_mean)
        bn.running_var.copy_(second * uniform(bn.num_features, 0.8, 1.25))

    features = []
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.kernel_size != (1, 1):
                w = conv.weight
                scale = torch.randn((*w.shape[:2], 1, 1), generator=g) * w.std()
                w.copy_(scale * (1 + SMOOTHNESS * torch.randn(w.shape, generator=g)))
        for bn in norms:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.copy_(BIAS[0] + BIAS[1] * torch.randn(bn.bias.shape, generator=g))
            bn.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
        for block in model.modules():
            # torchvision's residual blocks say use_res_connect, timm's has_skip
            if getattr(block, "use_res_connect", False) or getattr(block, "has_skip", False):
                last = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
                last.weight.mul_(RESIDUAL_GAIN)
                last.bias.mul_(RESIDUAL_GAIN)
        hooks = [bn.register_forward_pre_hook(calibrate) for bn in norms]
        hooks.append(classifier.register_forward_pre_hook(lambda m, inputs: features.append(inputs[0].double())))
        try:
            model.eval()
            logits = model(_nchw(images_nhwc)).double()
        finally:
            for hook in hooks:
                hook.remove()

        # One class per photo; its row gains each view's features, centred, orthogonal to their
        # mean and scaled so that the view's own logit rises by TOP1_MARGIN standard deviations.
        f = features[0]
        mean = f.mean(0)
        centred = f - mean
        centred -= (centred @ mean)[:, None] * mean / mean.dot(mean)
        per_view = centred / (centred**2).sum(1, keepdim=True)
        photos = per_view.reshape(-1, views, per_view.shape[1]).sum(1)
        classes = torch.randperm(classifier.out_features, generator=g)[: len(photos)]
        classifier.weight.index_add_(0, classes, (TOP1_MARGIN * logits.std() * photos).float())
    return model
