"""Exact integer convolutions in float64 with Winograd's minimal filtering F(2x2, 3x3).

The integer hyper-synthesis (models/entropy/integer.py) runs integer-valued float64
convolutions, and float64 has no fast CPU kernels: they cost about 4x their float32 twins, most
of the exact path's extra time. Winograd (Lavin and Gray, "Fast Algorithms for Convolutional
Neural Networks", CVPR 2016) computes each 2x2 block of a 3x3 convolution's output with 16
multiplications per input/output channel pair instead of 36, as one batched matmul between two
cheap transforms made of additions only.

Exactness. Every step works on integers: the input transform B^T d B adds or subtracts 4
inputs, the kernel transform uses G' = 2G (integer entries, computed once in int64 here), so
the result is 4x the convolution, and the output transform A^T M A adds or subtracts 9 matmul
outputs. Any partial sum that any summation order forms is a signed sum of a subset of the
products |U'| * |V|, so its magnitude is at most
    sum over the 9 transformed positions of an output (A^T row supports) of
    sum over input channels of |U'| * 4 max|x|.
Per kernel tap, the G' entries of those positions sum to at most 4 per axis (the rows of G'
picked by either row of A^T: 2+1+1, 1+1+2), so the whole is at most 16 * 4 = GROWTH = 64
times sum|W| * max|x|, the bound of the direct convolution (integer.py keeps
GROWTH * bound below 2^52). The division by 4 is folded into the power-of-two divisor.

An upsampling convolution (stride 2 up, 5x5) is first rewritten as a 3x3 stride-1 convolution
with 4x the output channels (one per output phase, its polyphase components, zero taps where a
phase has fewer) followed by depth_to_space; each phase's taps are a subset of the kernel's, so
the bound holds for it too. The rewrite is found by probing the layer's own convolution once
(`polyphase_kernel`), so it follows tfc's padding and flipping conventions exactly.
"""

import numpy as np
import tensorflow as tf

GROWTH = 64  # Winograd's partial sums over the direct convolution's bound (see above)

_G = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)  # 2G, integer
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# Output transform A^T M A of both axes as one [16, 4] matrix (transformed position, output).
_OUTPUT = np.einsum("ia,jb->abij", _AT, _AT).reshape(16, 4)


def polyphase_kernel(conv):
    """(taps, upsampling) of `conv`'s geometry: taps[t_y, t_x] = the (p, q) tap of its kernel
    that a 3x3 stride-1 "same" correlation of the low-resolution input uses at offset (t_y,
    t_x) for output phase (a, b), as an int array [3, 3, u, u, 2] (-1: none); None when the
    layer is not a stride-1 or upsampling 3x3/5x5 convolution (then run it directly).

    Found by probing: one impulse through the layer's convolution with a kernel whose taps
    hold their own numbers shows where each tap lands.
    """
    height, width = conv.kernel_support
    if conv.strides_down != (1, 1) or height != width or height not in (3, 5):
        return None
    up = conv.strides_up[0]
    if conv.strides_up != (up, up) or up not in (1, 2) or (up == 1 and height != 3):
        return None
    size, centre = 8, 4
    channels_in = conv.kernel.shape[-2]
    kernel = np.zeros((height, width, channels_in, conv.filters))
    kernel[:, :, 0, 0] = 1 + np.arange(height * width).reshape(height, width)
    impulse = np.zeros((1, size, size, channels_in))
    impulse[0, centre, centre, 0] = 1.0
    response = np.rint(conv.linear(tf.constant(impulse), tf.constant(kernel)).numpy()[0, ..., 0])
    taps = -np.ones((3, 3, up, up, 2), np.int64)
    for y, x in zip(*np.nonzero(response)):
        tap = int(response[y, x]) - 1
        t_y, t_x = centre - y // up + 1, centre - x // up + 1
        if not (0 <= t_y < 3 and 0 <= t_x < 3) or taps[t_y, t_x, y % up, x % up, 0] >= 0:
            return None
        taps[t_y, t_x, y % up, x % up] = divmod(tap, width)
    if np.count_nonzero(taps[..., 0] >= 0) != height * width:
        return None
    return taps, up


class WinogradConv:
    """4x the convolution of an integer kernel, exactly, on integer-valued float64 NHWC input,
    for a layer whose `polyphase_kernel` is `geometry`."""

    def __init__(self, kernel, geometry):
        taps, self.up = geometry
        kernel = np.asarray(kernel, np.int64)
        channels_in, channels_out = kernel.shape[2:]
        # 3x3 kernel with one output channel group per phase, in depth_to_space's order.
        phased = np.zeros((3, 3, channels_in, self.up, self.up, channels_out), np.int64)
        for t_y, t_x, a, b in np.ndindex(3, 3, self.up, self.up):
            p, q = taps[t_y, t_x, a, b]
            if p >= 0:
                phased[t_y, t_x, :, a, b] = kernel[p, q]
        phased = phased.reshape(3, 3, channels_in, -1)
        transformed = np.einsum("at,bu,tuco->abco", _G, _G, phased)
        self.channels_out = phased.shape[-1]
        self.kernel = tf.constant(transformed.reshape(16, channels_in, -1), tf.float64)
        self.output = tf.constant(_OUTPUT, tf.float64)

    def __call__(self, inputs):
        """[n, up*h, up*w, channels_out / up^2]: 4x the convolution (exact, see module)."""
        shape = tf.shape(inputs)
        n, h, w, c = shape[0], shape[1], shape[2], shape[3]
        half_h, half_w = (h + 1) // 2, (w + 1) // 2
        # "same" padding of 1, plus one zero row/column at the end when a side is odd (the
        # outputs it adds are cropped: a 3x3 "same" output only sees its neighbours).
        padded = tf.pad(inputs, [[0, 0], [1, 1 + h % 2], [1, 1 + w % 2], [0, 0]])
        padded = tf.reshape(padded, [n, half_h + 1, 2, half_w + 1, 2, c])

        def transform(d0, d1, d2, d3):  # B^T d, along one axis
            return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]

        rows = transform(*[padded[:, r // 2:r // 2 + half_h, r % 2] for r in range(4)])
        tiles = [v for row in rows
                 for v in transform(*[row[:, :, c0 // 2:c0 // 2 + half_w, c0 % 2]
                                      for c0 in range(4)])]
        tiles = tf.reshape(tf.stack(tiles), [16, -1, c])
        products = tf.matmul(tiles, self.kernel)  # [16, n * half_h * half_w, channels_out]
        blocks = tf.matmul(self.output, tf.reshape(products, [16, -1]), transpose_a=True)
        blocks = tf.reshape(blocks, [2, 2, n, half_h, half_w, self.channels_out])
        blocks = tf.transpose(blocks, [2, 3, 0, 4, 1, 5])
        outputs = tf.reshape(blocks, [n, 2 * half_h, 2 * half_w, self.channels_out])[:, :h, :w]
        if self.up > 1:
            outputs = tf.nn.depth_to_space(outputs, self.up)
        return outputs
