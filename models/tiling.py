"""Tiled application of the analysis and synthesis transforms, for images of any size.

A transform is run over overlapping tiles: each tile carries a halo at least as wide as the
transform's reach (how far, in input samples, a change can travel to an output sample), the
halo's outputs are cropped away, and the kept parts are written into one output array. The
kept outputs then equal those of the whole image up to float rounding, while the transform's
intermediate activations (hundreds of channels at 1/2 resolution) only ever exist for one
tile. The reach is derived from the convolutions themselves (kernel supports and strides;
`chain_reach` serves any chain of them). Inside traced functions, where sizes are tensors,
`apply_row_bands` does the same over bands of rows (the integer hyper-synthesis), and
`row_bands_sum` sums a per-element reduction (the estimated bits) over bands of rows, for
the same reason: bounded memory.

This is pure network code (a function of Keras layers and numpy arrays), so it lives with the
model: the model's coding functions call it, and imports run codec -> models only.
"""

import math

import numpy as np
import tensorflow as tf

from models.config import DEFAULT_TILE  # noqa: F401 (the default of every tile argument)
from models.layers import SignalConv2D



def convolutions(transform):
    """The SignalConv2D layers of a transform, in the order they are applied."""
    return [layer for layer in transform.layers if isinstance(layer, SignalConv2D)]


def total_stride(transform):
    """(downsampling, upsampling) factor of a transform's chain of convolutions, per side."""
    return chain_stride(convolutions(transform))


def chain_stride(convs):
    """(downsampling, upsampling) factor of a chain of convolutions, per side."""
    down = up = 1
    for layer in convs:
        down *= layer.strides_down[0]
        up *= layer.strides_up[0]
    return down, up


def reach(transform):
    """How far (in input samples) a change of one input sample can travel through a
    transform's convolutions, either side (chain_reach)."""
    return chain_reach(convolutions(transform))


def chain_reach(convs):
    """How far (in input samples) a change of one input sample can travel, either side.

    Walks the convolutions in order, tracking the size of one sample of the current layer's
    input in units of the transform's input. A correlation with an odd kernel k and "same"
    padding reaches (k - 1) / 2 of its input samples. An upsampling convolution by s first
    puts input sample i at output position s * i (zeros between), then correlates: it
    reaches (k - 1) / 2 of its output samples, (k - 1) / (2 s) of its input samples, from
    an output sample's position (output p sits at p / s input samples). GDN mixes channels
    only and adds no reach. tests/test_tiling.py checks both transforms' reach against the
    measured extent of the gradients.
    """
    total, unit = 0.0, 1.0
    for layer in convs:
        half = (max(layer.kernel_support) - 1) / 2
        down, up = layer.strides_down[0], layer.strides_up[0]
        total += half / up * unit
        unit = unit * down / up
    return total


def halo(transform, align):
    """The halo (input samples per side) of a tiled transform: its reach rounded up to a
    multiple of `align`, so that tiles and their halos start on the transform's grid."""
    return int(math.ceil(reach(transform) / align) * align)


def spans(size, tile, align):
    """Split [0, size) into near-equal spans of at most about `tile`, starting on multiples of
    `align` (the last span ends at size). One span when tile is 0 or None or >= size."""
    if not tile or tile >= size:
        return [(0, size)]
    count = math.ceil(size / tile)
    step = math.ceil(size / count / align) * align
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def windows(size, tile, halo_size, align):
    """Per span of spans(size, tile, align): (kept span, input window around it).

    Every window has the same length (the longest span plus a halo each side, at most
    size), shifted inwards at the image's edges: it then holds at least `halo_size` samples
    either side of its span, or reaches the image's edge, where the transform pads as it
    does for the whole image. One window shape per image keeps the convolution libraries'
    per-shape state (kernels, reordered weights, scratch buffers) to one shape.
    """
    kept = spans(size, tile, align)
    length = min(size, max(end - start for start, end in kept) + 2 * halo_size)
    result = []
    for start, end in kept:
        first = max(0, min(start - halo_size, size - length))
        result.append(((start, end), (first, first + length)))
    return result


def apply_tiled(function, inputs, tile, halo_size, align, scale):
    """function applied to the (1, H, W, C) array `inputs`, over tiles; a numpy result.

    function: (1, h, w, C) -> (1, h * scale, w * scale, C') for every tile shape, with
    outputs that depend on inputs within `halo_size` samples only. tile, halo_size and align
    are in input samples (tile 0 or None: the whole input at once, as one call); scale is the
    output/input size ratio (1/16 for an analysis, 16 for a synthesis). Tiles start on
    multiples of `align`, so that output positions fall on whole output samples; all tiles
    of one image have the same shape (see windows).
    """
    height, width = inputs.shape[1:3]
    rows = windows(height, tile, halo_size, align)
    cols = windows(width, tile, halo_size, align)
    if len(rows) == 1 and len(cols) == 1:
        return np.asarray(function(inputs))
    output = None
    for (top, bottom), (t, b) in rows:
        for (left, right), (l, r) in cols:
            result = np.asarray(function(inputs[:, t:b, l:r]))
            if output is None:
                output = np.empty((1, round(height * scale), round(width * scale),
                                   result.shape[3]), result.dtype)
            out_top, out_left = round(top * scale), round(left * scale)
            out_bottom, out_right = round(bottom * scale), round(right * scale)
            skip_top, skip_left = round((top - t) * scale), round((left - l) * scale)
            output[:, out_top:out_bottom, out_left:out_right] = result[
                :, skip_top:skip_top + out_bottom - out_top,
                skip_left:skip_left + out_right - out_left]
    return output


def _rows_per_band(tensor, band_elements):
    """Rows of an NHWC tensor that hold about `band_elements` values per batch element."""
    shape = tf.shape(tensor)
    return tf.maximum(1, band_elements // (shape[2] * shape[3]))


def apply_row_bands(function, inputs, band_elements, halo_size, scale, dtype):
    """function applied to NHWC `inputs` over bands of rows, in the graph: `windows` made with
    tensors, for traced functions whose input height is not known when tracing.

    function: (n, h, W, C) -> (n, h * scale, W * scale, C') of `dtype`, with outputs that
    depend on inputs within `halo_size` rows only (scale an integer). Bands hold about
    `band_elements` values per batch element; each runs on a window of its rows plus a halo
    (shifted inwards at the edges, one window length for all), whose outputs are cropped. One
    window's intermediates are alive at a time, so memory stays bounded for any height.
    """
    height = tf.shape(inputs)[1]
    band = _rows_per_band(inputs, band_elements)
    count = (height + band - 1) // band
    step = (height + count - 1) // count
    length = tf.minimum(height, step + 2 * halo_size)

    def run_band(index, bands):
        start = index * step
        end = tf.minimum(start + step, height)
        first = tf.maximum(0, tf.minimum(start - halo_size, height - length))
        outputs = function(inputs[:, first:first + length])
        kept = outputs[:, (start - first) * scale:(end - first) * scale]
        # Rows first: the TensorArray concatenates along its first axis.
        return index + 1, bands.write(index, tf.transpose(kept, [1, 0, 2, 3]))

    bands = tf.TensorArray(dtype, size=count, infer_shape=False)
    # One band at a time: parallel iterations would hold several bands' intermediates.
    _, bands = tf.while_loop(lambda index, _: index < count, run_band, [0, bands],
                             parallel_iterations=1)
    return tf.transpose(bands.concat(), [1, 0, 2, 3])


def row_bands_sum(function, tensors, band_elements):
    """Sum of function(*row band of each tensor) over bands of rows, in the graph.

    tensors: NHWC tensors of equal batch, height and width; function maps row bands of them
    to a float32 vector with one value per batch element (a per-element reduction such as
    bits, whose sum over bands is its value on the whole tensors up to float summation
    order). Bands hold about `band_elements` values per batch element of the first tensor,
    and one band's intermediates are alive at a time, so memory stays bounded for any image
    size.
    """
    height = tf.shape(tensors[0])[1]
    band = _rows_per_band(tensors[0], band_elements)

    def add_band(start, total):
        rows = [tensor[:, start:start + band] for tensor in tensors]
        return start + band, total + function(*rows)

    # One band at a time: parallel iterations would hold several bands' intermediates.
    return tf.while_loop(lambda start, _: start < height, add_band,
                         [0, tf.zeros(tf.shape(tensors[0])[:1], tf.float32)],
                         shape_invariants=[tf.TensorShape([]), tf.TensorShape([None])],
                         parallel_iterations=1)[1]
