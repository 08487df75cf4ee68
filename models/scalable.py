"""The layer loop shared by both scalable models.

Every layer k: analyse its input image, predict its latent from the context of the lower
layers (k > 0), code the residual with the layer's entropy model, add the prediction back,
extend the context with the decoded latent, and synthesize the layer's image from the context.
Subclasses supply which image each layer analyses (`levels`) and how the context grows
(`extend_context`, `context_channels`).
"""

import functools
import hashlib
import types

import numpy as np
import tensorflow as tf

from models import tiling
from models.config import DOWNSAMPLING
from models.entropy import make_entropy_model
from models.entropy.coding import tables_digest
from models.layers import (AnalysisTransform, PredictionTransform, SynthesisTransform,
                           check_traced_functions_compare_tensors, crop_to, set_kernels_frozen)

# Images are padded to this multiple before coding.
PAD_MULTIPLE = DOWNSAMPLING


def to_uint8(image):
    """Float image in [0, 1] -> rounded, clipped uint8 (HxWx3, batch dimension dropped)."""
    return tf.saturate_cast(tf.round(image[0] * 255.0), tf.uint8)


class DecodingError(ValueError):
    """TensorFlow failed to decode a layer (damaged or desynchronised stream)."""

    def __init__(self, layer_name, error):
        self.layer_name = layer_name
        detail = (error.message or "").strip().splitlines()
        detail = detail[0][:200] if detail else type(error).__name__
        super().__init__(f"layer {layer_name} cannot be decoded ({detail})")


class ScalableModel(tf.keras.Model):
    """Base of the quality- and spatial-scalable models; layers come from `config` lists."""

    prediction_variant = None  # "quality" or "spatial"
    cumulative_rate = None     # rate of layer k counts layers 0..k (quality) or k alone (spatial)

    def __init__(self, config):
        super().__init__(name=f"{config.mode}_model")
        check_traced_functions_compare_tensors()
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
        # Traced transforms, one per layer; a plain namespace so Keras does not track it.
        self._coding = types.SimpleNamespace(analyses={}, syntheses={}, ready=False,
                                              tables_digest=None)

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
    def predict_latent(self, k, context, latent_shape):
        """Layer k's prediction of its latent from the context of the layers below it,
        cropped to `latent_shape` (height, width)."""
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
                prediction = self.predict_latent(k, context, tf.shape(latent)[1:3])
                residual_hat, bits = self.entropy[k](latent - prediction, training=training)
                latent_hat = prediction + residual_hat
            context = self.extend_context(context, latent_hat, k)
            reconstruction = crop_to(self.synthesis[k](context), level)
            outputs.append(dict(bits=bits, reconstruction=reconstruction,
                                latent=latent, prediction=prediction))
        return outputs

    def loss_terms(self, inputs, outputs):
        """Loss = sum_k lambda_k * bpp_k + 255^2 * MSE_k, and per-layer metrics (bpp, MSE on
        the 8-bit scale, prediction MSE; PSNR is derived from the MSE by the caller)."""
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
            if k > 0:  # monitored only, not part of the loss (as the reference)
                metrics[f"prediction_mse_{name}"] = 0.1 * 255.0 ** 2 * tf.reduce_mean(
                    tf.math.squared_difference(out["latent"], out["prediction"]))
        metrics["loss"] = loss
        return loss, metrics

    def set_integer_hyper_synthesis(self, enabled):
        """Quantization in the loop: every hyperprior layer's training form computes its scale
        indexes with the integer network's arithmetic (models/entropy/integer.py), so training
        optimizes the rate that coding will have. ValueError for a model without scale
        indexes (factorized)."""
        models = [m for m in self.entropy if hasattr(m, "integer_hyper_synthesis")]
        if enabled and not models:
            raise ValueError(f"the {self.config.entropy_model} entropy model has no "
                             "hyper-synthesis to train as an integer network")
        for entropy_model in models:
            entropy_model.integer_hyper_synthesis = bool(enabled)

    def train_step(self, inputs):
        # Training changes the weights: back to the trainable kernels, and coding must be
        # prepared again afterwards.
        set_kernels_frozen(self, False)
        self._coding.ready = False
        with tf.GradientTape() as tape:
            outputs = self(inputs, training=True)
            loss, metrics = self.loss_terms(inputs, outputs)
            # Under tf.distribute the replicas' gradients are summed: dividing by their
            # count gives the gradient of the loss averaged over the global batch.
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
    def coding_tables(self):
        """Every entropy model's coding tables, computed from the current weights: a dict of
        numpy arrays named `<entropy layer name>/<array>` (stored beside the checkpoint)."""
        tables = {}
        for entropy_model in self.entropy:
            tables.update({f"{entropy_model.name}/{key}": value
                           for key, value in entropy_model.coding_tables().items()})
        return tables

    def prepare_coding(self, tables=None):
        """Build the coding form from stored `tables` (coding_tables() of these weights;
        computed here when None), and compute every convolution kernel once (see
        layers.SignalConv2D)."""
        if tables is None:
            tables = self.coding_tables()
        for entropy_model in self.entropy:
            prefix = entropy_model.name + "/"
            entropy_model.load_tables({key[len(prefix):]: value for key, value in tables.items()
                                       if key.startswith(prefix)})
        set_kernels_frozen(self, True)
        for table in (self._coding.analyses, self._coding.syntheses):
            table.clear()
        self._coding.tables_digest = tables_digest(tables)
        self._coding.ready = True

    def tables_digest(self):
        """8-byte digest of the coding tables in use, stored in every stream."""
        self._check_coding()
        return self._coding.tables_digest

    def _encode_layer(self, k, latent, context=None, estimate_bits=True):
        prediction = 0.0 if k == 0 else self.predict_latent(k, context, tf.shape(latent)[1:3])
        strings, shapes, residual_hat, bits, symbols = self.entropy[k].compress(
            latent - prediction, estimate_bits)
        context = self.extend_context(context, prediction + residual_hat, k)
        return strings, shapes, bits, symbols, context

    def _decode_layer(self, k, strings, shapes, context=None):
        residual_hat, symbols = self.entropy[k].decompress(strings, shapes)
        latent_hat = residual_hat if k == 0 else (
            self.predict_latent(k, context, shapes[0]) + residual_hat)
        return symbols, self.extend_context(context, latent_hat, k)

    def _traced(self, table, k, function, specs):
        """The traced function of layer k in `table`, made once (shapes relaxed: any size)."""
        if k not in table:
            table[k] = tf.function(lambda *args: function(k, *args), input_signature=specs)
        return table[k]

    def _context_spec(self, k):
        return tf.TensorSpec((1, None, None, self.context_channels(k)), tf.float32)

    # The entropy coding of a layer (prediction, hyperprior, integer hyper-synthesis, range
    # coder: about a thousand small ops) runs eagerly. Tracing it cost 1-3 s per layer and
    # direction on the first image (10 of the shipped quality model's 11 s to the first
    # stream), for 0.02-0.07 s per layer saved on every later one (bench/first_image.py).
    # The transforms, whose big convolutions gain from the graph's fused kernels, are traced.
    def _encoder(self, k):
        return functools.partial(self._encode_layer, k)

    def _decoder(self, k):
        return functools.partial(self._decode_layer, k)

    def coding_trace_counts(self):
        """How many traced coding functions exist and how often they were traced in all;
        the two are equal when nothing was retraced."""
        functions = [f for table in (self._coding.analyses, self._coding.syntheses)
                     for f in table.values()]
        return dict(functions=len(functions),
                    traces=sum(f.experimental_get_tracing_count() for f in functions))

    def _analyse(self, k, level, tile):
        """Layer k's latent (numpy, 1 x h/16 x w/16 x F) of a uint8 HxWx3 level, tiled."""
        function = self._traced(
            self._coding.analyses, k,
            lambda k, image: self.analysis[k](tf.cast(image, tf.float32) / 255.0),
            [tf.TensorSpec((1, None, None, 3), tf.uint8)])
        transform = self.analysis[k]
        down, _ = tiling.total_stride(transform)
        return tiling.apply_tiled(function, np.asarray(level)[None], tile,
                                  tiling.halo(transform, down), down, 1 / down)

    def _synthesize(self, k, context, tile):
        """Layer k's uint8 image (padded size) from its context, tiled."""
        function = self._traced(
            self._coding.syntheses, k,
            lambda k, c: to_uint8(self.synthesis[k](c))[None], [self._context_spec(k)])
        transform = self.synthesis[k]
        _, up = tiling.total_stride(transform)
        image = tiling.apply_tiled(function, np.asarray(context), tile and max(1, tile // up),
                                   tiling.halo(transform, 1), 1, up)
        return image[0]

    def _check_coding(self):
        if not self._coding.ready:
            raise RuntimeError("call prepare_coding() after loading the weights")

    def compress(self, levels, reconstruct=True, tile=tiling.DEFAULT_TILE, estimate_bits=True):
        """Code every layer: the list of compress_layers' dicts (every reconstruction held)."""
        return list(self.compress_layers(levels, reconstruct, tile, estimate_bits))

    def compress_layers(self, levels, reconstruct=True, tile=tiling.DEFAULT_TILE,
                        estimate_bits=True):
        """Code every layer, yielding each layer's code as soon as it is made.

        levels: one uint8 HxWx3 array per layer (sides multiples of PAD_MULTIPLE).
        Yields per layer a dict: `strings` (list of bytes), `shapes` (flat list of ints),
        `bits` (estimated from the likelihoods; None with estimate_bits=False), `symbols`
        (per string the int32 array of symbols it codes) and `reconstruction` (uint8, padded size),
        the exact image a decoder of the same weights produces. reconstruct=False skips
        the synthesis transforms (a sender needs only the streams): `reconstruction` is None.
        Only the context (1/16 resolution) is kept between layers, so a caller that drops
        each reconstruction before the next holds one image-sized array at a time.
        tile: side in pixels of the tiles the analysis and synthesis transforms run over
        (models/tiling.py; 0 or None: the whole image at once). The streams do not depend on
        it beyond float rounding.
        """
        self._check_coding()
        context = None
        for k, level in enumerate(levels):
            latent = tf.constant(self._analyse(k, level, tile))
            args = [latent] + ([] if k == 0 else [context])
            del latent
            strings, shapes, bits, symbols, context = self._encoder(k)(
                *args, estimate_bits=estimate_bits)
            del args
            yield dict(
                strings=[s.numpy()[0] for s in strings],
                shapes=[int(v) for shape in shapes for v in shape.numpy()],
                bits=None if bits is None else float(bits[0]),
                symbols=[s.numpy() for s in symbols],
                reconstruction=self._synthesize(k, context, tile) if reconstruct else None)

    def decompress(self, codes, last_only=False, tile=tiling.DEFAULT_TILE):
        """Decode the first len(codes) layers: one uint8 reconstruction (padded size) per layer,
        None where last_only=True skips it (see decode_layers)."""
        return [layer["reconstruction"] for layer in self.decode_layers(codes, last_only, tile)]

    def decode_layers(self, codes, last_only=False, tile=tiling.DEFAULT_TILE):
        """Decode the first len(codes) layers: the list of iter_decode's dicts."""
        return list(self.iter_decode(codes, last_only, tile))

    def iter_decode(self, codes, last_only=False, tile=tiling.DEFAULT_TILE):
        """Decode the first len(codes) layers from (strings, flat shapes) pairs, yielding
        each layer as soon as it is decoded.

        Uses no analysis transform and nothing of the layers above. Yields per decoded layer
        a dict: `symbols` (per string the int32 array the entropy decoder produced) and
        `reconstruction` (uint8, padded size); with last_only=True only the top layer is
        synthesized (the lower layers' latents are still decoded: they are its context) and
        the other reconstructions are None. tile: as in compress_layers. A TensorFlow error
        while decoding layer k (a damaged or desynchronised stream) raises DecodingError
        naming the layer.
        """
        self._check_coding()
        context = None
        for k, (strings, shapes) in enumerate(codes):
            name = self.config.layer_names[k]
            sizes = [spec.shape[0] for spec in self.entropy[k].shape_specs()]
            if len(strings) != len(sizes) or len(shapes) != sum(sizes):
                raise ValueError(f"layer {name}: expected {len(sizes)} "
                                 f"strings and {sum(sizes)} shape values")
            ends = np.cumsum(sizes)
            args = [[tf.constant([s]) for s in strings],
                    [tf.constant(shapes[end - size:end], tf.int32)
                     for size, end in zip(sizes, ends)]]
            if k > 0:
                args.append(context)
            reconstruct = not last_only or k == len(codes) - 1
            try:
                symbols, context = self._decoder(k)(*args)
            except tf.errors.OpError as error:
                raise DecodingError(name, error) from None
            del args
            yield dict(
                symbols=[s.numpy() for s in symbols],
                reconstruction=self._synthesize(k, context, tile) if reconstruct else None)
