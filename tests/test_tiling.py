"""Tests for tiled analysis and synthesis (models/tiling.py) and tiled coding.

Receptive fields: the reach derived from the layer definitions is checked against the
measured one (the extent of the non-zero gradient of one output sample). Equivalence of tiled
and whole-image coding at toy size, odd-sized image, 48-pixel tiles (so 3 x 4 tiles plus
halos), untrained tiny models of both modes (measured: identical streams and symbols, pixels
equal; the tolerances below are what float rounding may move).
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import smooth_image
from helpers import ROOT
from codec.image import pad_to_multiple, pyramid
from models import tiling
from models.config import ModelConfig
from models.entropy import make_entropy_model
from models.factory import build_model
from models.layers import AnalysisTransform, SynthesisTransform
from models.scalable import PAD_MULTIPLE

TILE = 48
HEIGHT, WIDTH = 139, 181  # odd; padded to 144 x 192


def _measured_reach(transform, channels, size, output_positions, scale):
    """Largest distance (input samples) from an output sample's position to an input sample
    with a non-zero gradient, over the given output positions (rows = columns)."""
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.uniform(0, 1, (1, size, size, channels)).astype(np.float32))
    farthest = 0.0
    for p in output_positions:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            output = transform(inputs)[0, p, p, 0]
        influence = np.abs(tape.gradient(output, inputs).numpy()[0]).sum(axis=(1, 2)) > 0
        rows = np.nonzero(influence)[0]
        centre = p * scale
        farthest = max(farthest, centre - rows.min(), rows.max() - centre)
    return farthest


def test_analysis_reach_is_derived_and_exact():
    transform = AnalysisTransform(4)
    measured = _measured_reach(transform, 3, 192, [5, 6], scale=16)
    assert tiling.reach(transform) == 30.0  # 2 * (1 + 2 + 4 + 8): four 5x5, stride 2
    assert measured == tiling.reach(transform)
    assert tiling.halo(transform, 16) == 32


def test_synthesis_reach_is_derived_and_exact():
    transform = SynthesisTransform(4)
    # Every phase of an output pixel within one latent sample (positions 16 * 6 + 0..15).
    measured = _measured_reach(transform, 4, 12, range(96, 112), scale=1 / 16)
    derived = tiling.reach(transform)
    assert derived == 1.875  # 2 / 2 * (1 + 1/2 + 1/4 + 1/8): four 5x5, upsampling by 2
    assert measured == derived
    assert tiling.halo(transform, 1) == 2  # 32 pixels, was 48 with a looser bound


@pytest.mark.parametrize("size, tile, align", [(144, 48, 16), (192, 50, 16), (10, 3, 1),
                                               (100, 0, 16), (100, 200, 16)])
def test_spans_cover_the_range_aligned(size, tile, align):
    spans = tiling.spans(size, tile, align)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(start % align == 0 for start, _ in spans)
    if tile and tile < size:
        assert len(spans) == math.ceil(size / tile)


@pytest.mark.parametrize("size, tile, halo, align", [(144, 48, 32, 16), (400, 100, 32, 16),
                                                     (250, 48, 2, 1), (53, 10, 2, 1),
                                                     (30, 48, 2, 1)])
def test_windows_hold_their_span_and_halo_in_one_shape(size, tile, halo, align):
    windows = tiling.windows(size, tile, halo, align)
    assert [span for span, _ in windows] == tiling.spans(size, tile, align)
    assert len({end - start for _, (start, end) in windows}) == 1
    for (start, end), (first, last) in windows:
        assert 0 <= first <= start and end <= last <= size and first % align == 0
        assert start - first >= halo or first == 0
        assert last - end >= halo or last == size


@pytest.mark.parametrize("transform, channels, size, align, scale", [
    (AnalysisTransform(6), 3, (144, 192), 16, 1 / 16),
    (SynthesisTransform(6), 6, (9, 12), 1, 16)])
def test_apply_tiled_equals_the_whole_transform(transform, channels, size, align, scale):
    rng = np.random.default_rng(1)
    inputs = rng.uniform(0, 1, (1, *size, channels)).astype(np.float32)
    whole = transform(inputs).numpy()
    tile = 48 if align == 16 else 4
    tiled = tiling.apply_tiled(lambda x: transform(x), inputs, tile,
                               tiling.halo(transform, align), align, scale)
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-5 * np.abs(whole).max())


def _model(mode):
    filters = [6, 8] if mode == "quality" else [4, 6, 8]
    lmbdas = [0.5, 0.2] if mode == "quality" else [0.5, 0.3, 0.2]  # low rate weight: many symbols
    names = ["B", "e1", "e2"][:len(filters)]
    model = build_model(ModelConfig(mode=mode, layer_names=names, filters=filters,
                                    lmbdas=lmbdas, entropy_model="hyperprior"))
    model.prepare_coding()
    return model


def _levels(mode, model):
    image = smooth_image(HEIGHT, WIDTH, seed=3)
    levels = ([image] * model.config.num_layers if mode == "quality"
              else pyramid(image, model.config.num_layers))
    return [pad_to_multiple(level, PAD_MULTIPLE) for level in levels]


@pytest.mark.parametrize("mode", ["quality", "spatial"])
def test_tiled_coding_matches_whole_image_coding(mode):
    model = _model(mode)
    levels = _levels(mode, model)
    whole = model.compress(levels, tile=0)
    tiled = model.compress(levels, tile=TILE)
    assert max(levels[-1].shape[:2]) > 2 * TILE  # really tiled: several tiles per side
    differing_symbols = 0
    for k, (w, t) in enumerate(zip(whole, tiled)):
        assert w["shapes"] == t["shapes"]
        lengths = [len(s) for s in w["strings"]], [len(s) for s in t["strings"]]
        assert all(abs(a - b) <= 4 for a, b in zip(*lengths)), lengths
        # Coded symbols of each stream (the residuals, with the side information).
        differing_symbols += sum(int(np.count_nonzero(a != b)) if a.shape == b.shape else a.size
                                 for a, b in zip(w["symbols"], t["symbols"]))
        assert np.abs(w["reconstruction"].astype(int) - t["reconstruction"]).max() <= 1
    symbols = sum(np.prod(code["shapes"][:2]) * f for code, f in zip(whole, model.config.filters))
    assert differing_symbols <= 0.001 * symbols, (differing_symbols, symbols)
    # The receiver may tile differently from the sender: decoding tiled or whole agrees.
    codes = [(t["strings"], t["shapes"]) for t in tiled]
    decoded_whole = model.decompress(codes, tile=0)
    decoded_tiled = model.decompress(codes, tile=TILE)
    for k, (a, b) in enumerate(zip(decoded_whole, decoded_tiled)):
        assert np.abs(a.astype(int) - b).max() <= 1
        np.testing.assert_array_equal(b, tiled[k]["reconstruction"])  # encoder == decoder


def test_last_layer_only_tiled_decode_matches():
    model = _model("quality")
    codes = [(c["strings"], c["shapes"]) for c in model.compress(_levels("quality", model),
                                                                  reconstruct=False, tile=TILE)]
    full = model.decompress(codes, tile=TILE)
    top = model.decompress(codes, last_only=True, tile=TILE)
    assert top[0] is None
    np.testing.assert_array_equal(top[1], full[1])
    # Tiles of several shapes, one trace each of the per-tile transforms (relaxed shapes;
    # the entropy coding runs eagerly).
    coding = model._coding
    for table in (coding.analyses, coding.syntheses):
        assert table and all(f.experimental_get_tracing_count() == 1 for f in table.values())


_ALLOCATOR_PROBE = r"""
import codec.streams  # noqa: F401 (chooses the allocator before any tensor exists)
import tensorflow as tf

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

big = tf.random.uniform((64, 1024, 1024)) * 2.0  # 256 MiB, twice
held = rss_mib()
del big
print(held, rss_mib())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_codec_processes_return_freed_tensors_to_the_system():
    """A process that imports the codec frees large tensors back to the system (the oneDNN
    BFC pool would keep them resident: coding's peak memory then ratchets up)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"}
    out = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    held, after = (float(v) for v in out.stdout.split())
    assert held - after > 200, (held, after)


_FRAGMENTATION_PROBE = r"""
import codec.streams  # noqa: F401 (sets glibc's mmap threshold)
import numpy as np

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

first = np.ones((512, 1024), np.float32)  # 2 MiB, mapped; freeing it would raise a dynamic
del first                                 # threshold above 2 MiB
buffers = [np.ones((512, 1024), np.float32) for _ in range(100)]  # 200 MiB
held = rss_mib()
del buffers[::2]  # every other one: holes in a heap, whole mappings given back
print(held, rss_mib())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_codec_processes_give_back_every_freed_buffer_of_a_megabyte_or_more():
    """glibc's mmap threshold is fixed (codec/streams.py): buffers freed among others still
    in use go back to the system instead of staying in a fragmented heap (where coding's
    resident size crept up stage after stage)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _FRAGMENTATION_PROBE], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    held, after = (float(v) for v in out.stdout.split())
    assert held - after > 90, (held, after)


def test_row_bands_sum_equals_the_sum_over_the_whole_tensor():
    """Bands of 1, 4 and all rows of a 13-row tensor (a shorter last band) add up to the whole
    tensor's bits, inside a traced function with any height."""
    model = make_entropy_model("factorized", 5)
    rng = np.random.default_rng(0)
    tensor = tf.constant(rng.normal(0, 3, (1, 13, 6, 5)).astype(np.float32))
    whole = model(tensor, training=False)[1].numpy()
    for rows in (1, 4, 13):
        banded = tf.function(lambda t: tiling.row_bands_sum(
            lambda band: model(band, training=False)[1], [t], rows * 6 * 5))
        np.testing.assert_allclose(banded(tensor).numpy(), whole, rtol=1e-5)
