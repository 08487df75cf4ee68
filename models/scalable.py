"""The layer loop shared by both scalable models.

Every layer k: analyse its input image, predict its latent from the context of the lower
layers (k > 0), code the residual with the layer's entropy model, add the prediction back,
extend the context with the decoded latent, and synthesize the layer's image from the context.
Subclasses supply which image each layer analyses (`levels`) and how the context grows
(`extend_context`, `context_channels`).
"""

import hashlib
import types

import numpy as np
import tensorflow as tf

from models.entropy import make_entropy_model
from models.layers import (AnalysisTransform, PredictionTransform, SynthesisTransform, crop_to,
                           set_kernels_frozen)

# Images are padded to this multiple before coding: the analysis downsamples by 16.
PAD_MULTIPLE = 16


def to_uint8(image):
    """Float image in [0, 1] -> rounded, clipped uint8 (HxWx3, batch dimension dropped)."""
    return tf.saturate_cast(tf.round(image[0] * 255.0), tf.uint8)


class ScalableModel(tf.keras.Model):
    """Base of the quality- and spatial-scalable models; layers come from `config` lists."""

    prediction_variant = None  # "quality" or "spatial"
    cumulative_rate = None     # rate of layer k counts layers 0..k (quality) or k alone (spatial)

    def __init__(self, config):
        super().__init__(name=f"{config.mode}_model")
        self.config = config
        names, filters = config.layer_names, config.filters
        self.analysis = [AnalysisTransform(f, name=f"analysis_{n}")
                         for n, f in zip(names, filters)]
        self.synthesis = [SynthesisTransform(f, name=f"synthesis_{n}")
                          for n, f in zip(names, filters)]
        self.prediction = [
            PredictionTransform(self.context_channels(k - 1), filters[k],
                                self.prediction_variant, name=f"prediction_{names[k]}")
            for k in range(1, config.num_layers)]
        self.entropy = [make_entropy_model(config.entropy_model, f, name=f"entropy_{n}")
                        for n, f in zip(names, filters)]
        # Traced coding functions, one per layer; a plain namespace so Keras does not track it.
        self._coding = types.SimpleNamespace(encoders={}, decoders={}, ready=False)

    # --- what the two modes supply ---------------------------------------------------------
    def levels(self, inputs):
        """The image (NHWC float) that each layer analyses, base first."""
        raise NotImplementedError

    def extend_context(self, context, latent, k):
        """The context after layer k, given the one after layer k-1 and layer k's latent."""
        raise NotImplementedError

    def context_channels(self, k):
        """Number of channels of the context after layer k."""
        raise NotImplementedError

    def example_inputs(self, size=64):
        """A zero batch of inputs of full-resolution side `size`, to build the weights."""
        raise NotImplementedError

    # --- training form ---------------------------------------------------------------------
    def _predict(self, k, context, latent_shape):
        return crop_to(self.prediction[k - 1](context), latent_shape)

    def call(self, inputs, training=False):
        """Train-time forward: per layer a dict of bits, reconstruction and latent/prediction."""
        outputs, context = [], None
        for k, level in enumerate(self.levels(inputs)):
            latent = self.analysis[k](level)
            if k == 0:
                prediction = tf.zeros_like(latent)
                latent_hat, bits = self.entropy[k](latent, training=training)
            else:
                prediction = self._predict(k, context, tf.shape(latent)[1:3])
                residual_hat, bits = self.entropy[k](latent - prediction, training=training)
                latent_hat = prediction + residual_hat
            context = self.extend_context(context, latent_hat, k)
            reconstruction = crop_to(self.synthesis[k](context), level)
            outputs.append(dict(bits=bits, reconstruction=reconstruction,
                                latent=latent, prediction=prediction))
        return outputs

    def loss_terms(self, inputs, outputs):
        """Loss = sum_k lambda_k * bpp_k + 255^2 * MSE_k, and per-layer metrics."""
        loss = 0.0
        metrics = {}
        cumulative_bits = 0.0
        levels = self.levels(inputs)
        for k, (name, level, out) in enumerate(zip(self.config.layer_names, levels, outputs)):
            pixels = tf.cast(tf.reduce_prod(tf.shape(level)[:3]), tf.float32)
            bits = tf.reduce_sum(out["bits"])
            cumulative_bits += bits
            rate_bits = cumulative_bits if self.cumulative_rate else bits
            bpp = rate_bits / (tf.cast(tf.reduce_prod(tf.shape(levels[-1])[:3]), tf.float32)
                               if self.cumulative_rate else pixels)
            mse = tf.reduce_mean(tf.math.squared_difference(level, out["reconstruction"]))
            mse *= 255.0 ** 2
            loss += self.config.lmbdas[k] * bpp + mse
            metrics[f"bpp_{name}"] = bpp
            metrics[f"mse_{name}"] = mse
            metrics[f"psnr_{name}"] = 10.0 * tf.math.log(255.0 ** 2 / mse) / tf.math.log(10.0)
            if k > 0:  # monitored only, not part of the loss (as the reference)
                metrics[f"prediction_mse_{name}"] = 0.1 * 255.0 ** 2 * tf.reduce_mean(
                    tf.math.squared_difference(out["latent"], out["prediction"]))
        metrics["loss"] = loss
        return loss, metrics

    def train_step(self, inputs):
        # Training changes the weights: back to the trainable kernels, and coding must be
        # prepared again afterwards.
        set_kernels_frozen(self, False)
        self._coding.ready = False
        with tf.GradientTape() as tape:
            outputs = self(inputs, training=True)
            loss, metrics = self.loss_terms(inputs, outputs)
            # Under tf.distribute the replicas' gradients are summed: dividing by their count
            # gives the gradient of the loss averaged over the global batch.
            loss /= tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return metrics

    def test_step(self, inputs):
        return self.loss_terms(inputs, self(inputs, training=False))[1]

    def build_weights(self):
        """Create all variables by running the model once on a small zero input."""
        # training=True: the same variables, without eagerly estimating quantization offsets.
        self(self.example_inputs(), training=True)

    def weights_digest(self):
        """8-byte digest of the trained weights, stored in every stream."""
        digest = hashlib.sha256()
        for variable in self.weights:
            digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
        return digest.digest()[:8]

    # --- coding form -----------------------------------------------------------------------
    def prepare_coding(self):
        """Rebuild the entropy models with range-coding tables from the trained weights, and
        compute every convolution kernel once (see layers.SignalConv2D)."""
        for entropy_model in self.entropy:
            entropy_model.prepare_coding()
        set_kernels_frozen(self, True)
        self._coding.encoders.clear()
        self._coding.decoders.clear()
        self._coding.ready = True

    def _encode_layer(self, k, reconstruct, level, context=None):
        level = tf.cast(level, tf.float32)[None] / 255.0
        latent = self.analysis[k](level)
        prediction = 0.0 if k == 0 else self._predict(k, context, tf.shape(latent)[1:3])
        strings, shapes, residual_hat, bits = self.entropy[k].compress(latent - prediction)
        context = self.extend_context(context, prediction + residual_hat, k)
        reconstruction = to_uint8(self.synthesis[k](context)) if reconstruct else None
        return strings, shapes, bits[0], context, reconstruction

    def _decode_layer(self, k, reconstruct, strings, shapes, context=None):
        residual_hat = self.entropy[k].decompress(strings, shapes)
        latent_hat = residual_hat if k == 0 else (
            self._predict(k, context, shapes[0]) + residual_hat)
        context = self.extend_context(context, latent_hat, k)
        return context, to_uint8(self.synthesis[k](context)) if reconstruct else None

    def _coder(self, table, layer_function, k, reconstruct, specs):
        """The traced coding function of layer k (with or without its synthesis), cached."""
        if k > 0:
            specs = specs + [tf.TensorSpec((1, None, None, self.context_channels(k - 1)),
                                           tf.float32)]
        if (k, reconstruct) not in table:
            table[k, reconstruct] = tf.function(
                lambda *args: layer_function(k, reconstruct, *args), input_signature=specs)
        return table[k, reconstruct]

    def _encoder(self, k, reconstruct):
        return self._coder(self._coding.encoders, self._encode_layer, k, reconstruct,
                           [tf.TensorSpec((None, None, 3), tf.uint8)])

    def _decoder(self, k, reconstruct):
        entropy_model = self.entropy[k]
        return self._coder(self._coding.decoders, self._decode_layer, k, reconstruct,
                           [[tf.TensorSpec((1,), tf.string)] * entropy_model.num_strings,
                            entropy_model.shape_specs()])

    def _check_coding(self):
        if not self._coding.ready:
            raise RuntimeError("call prepare_coding() after loading the weights")

    def compress(self, levels, reconstruct=True):
        """Code every layer.

        levels: one uint8 HxWx3 array per layer (sides multiples of PAD_MULTIPLE).
        Returns per layer a dict: `strings` (list of bytes), `shapes` (flat list of ints),
        `bits` (estimated from the likelihoods) and `reconstruction` (uint8, padded size),
        the exact image a decoder of the same weights produces. reconstruct=False skips
        the synthesis transforms (a sender needs only the streams): `reconstruction` is None.
        """
        self._check_coding()
        codes, context = [], None
        for k, level in enumerate(levels):
            args = [tf.convert_to_tensor(level, tf.uint8)] + ([] if k == 0 else [context])
            strings, shapes, bits, context, reconstruction = self._encoder(k, reconstruct)(*args)
            codes.append(dict(
                strings=[s.numpy()[0] for s in strings],
                shapes=[int(v) for shape in shapes for v in shape.numpy()],
                bits=float(bits),
                reconstruction=None if reconstruction is None else reconstruction.numpy()))
        return codes

    def decompress(self, codes, last_only=False):
        """Decode the first len(codes) layers from (strings, flat shapes) pairs.

        Uses no analysis transform and nothing of the layers above. Returns one uint8
        reconstruction (padded size) per decoded layer; with last_only=True only the top
        layer is synthesized (the lower layers' latents are still decoded: they are its
        context) and the other entries are None.
        """
        self._check_coding()
        reconstructions, context = [], None
        for k, (strings, shapes) in enumerate(codes):
            sizes = [spec.shape[0] for spec in self.entropy[k].shape_specs()]
            if len(strings) != len(sizes) or len(shapes) != sum(sizes):
                raise ValueError(f"layer {self.config.layer_names[k]}: expected {len(sizes)} "
                                 f"strings and {sum(sizes)} shape values")
            ends = np.cumsum(sizes)
            args = [[tf.constant([s]) for s in strings],
                    [tf.constant(shapes[end - size:end], tf.int32)
                     for size, end in zip(sizes, ends)]]
            if k > 0:
                args.append(context)
            reconstruct = not last_only or k == len(codes) - 1
            context, reconstruction = self._decoder(k, reconstruct)(*args)
            reconstructions.append(None if reconstruction is None else reconstruction.numpy())
        return reconstructions
