"""Quality-scalable model: every layer analyses the full image; context = concatenated latents."""

import tensorflow as tf

from models.scalable import ScalableModel


class QualityModel(ScalableModel):
    """Layers B, e1, ... at full resolution; layer k reuses the latents of layers 0..k.

    pred_k = P(sum of lower filters, F_k)(concat(y_0_hat .. y_{k-1}_hat));
    x_k_hat = S(F_k)(concat(y_0_hat .. y_k_hat)); rate of layer k is cumulative.
    """

    prediction_variant = "quality"
    cumulative_rate = True

    def levels(self, inputs):
        return [inputs] * self.config.num_layers

    def extend_context(self, context, latent, k):
        return latent if k == 0 else tf.concat([context, latent], axis=-1)

    def context_channels(self, k):
        return sum(self.config.filters[:k + 1])

    def example_inputs(self, size=64):
        return tf.zeros((1, size, size, 3))
