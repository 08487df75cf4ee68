"""Spatial-scalable model: layer k analyses pyramid level k; context = up-transform + concat."""

import tensorflow as tf

from models.layers import UpTransform, crop_to
from models.scalable import ScalableModel


class SpatialModel(ScalableModel):
    """Layers B (1/4), e1 (1/2), e2 (full) by default: each doubles the resolution.

    pred_k = P_spatial(channels of context_{k-1}, F_k)(context_{k-1});
    context_k = concat(U(F_{k-1})(context_{k-1}), y_k_hat); x_k_hat = S(F_k)(context_k).
    The rate of each layer is its own bits over its own pixels.
    """

    prediction_variant = "spatial"
    cumulative_rate = False

    def __init__(self, config):
        super().__init__(config)
        names, filters = config.layer_names, config.filters
        self.up = [UpTransform(filters[k - 1], name=f"up_{names[k]}")
                   for k in range(1, config.num_layers)]

    def levels(self, inputs):
        levels = list(inputs)
        if len(levels) != self.config.num_layers:
            raise ValueError(f"the spatial model takes {self.config.num_layers} images "
                             f"(lowest resolution first), got {len(levels)}")
        return levels

    def extend_context(self, context, latent, k):
        if k == 0:
            return latent
        return tf.concat([crop_to(self.up[k - 1](context), latent), latent], axis=-1)

    def context_channels(self, k):
        filters = self.config.filters
        return filters[0] if k == 0 else filters[k - 1] + filters[k]

    def example_inputs(self, size=64):
        n = self.config.num_layers
        return tuple(tf.zeros((1, size >> (n - 1 - k), size >> (n - 1 - k), 3)) for k in range(n))
