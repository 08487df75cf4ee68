"""Which stage of one evaluation sets the peak resident memory, and how it grows with the image.

    nice -n 5 python -m bench.memory_stages --size 3000x2000 [--eager]
        [--out bench/results/memory_stages_6mp.json]

What bench/large_images.py measures (pipeline.evaluation.evaluate_image on a photo upscaled
to --size, paper filters, hyperprior, untrained), with every stage marked: analysis, the
traced layer encoder and decoder (prediction + entropy coding), synthesis, PNG writing, the
metrics. Linux's peak RSS (VmHWM) is reset at the start of each stage (`/proc/self/clear_refs`)
and read at its end, so each stage's figure is the exact peak reached while it ran. With
--eager the traced coding functions run eagerly, so that their parts (prediction, hyper
analysis, integer hyper-synthesis, rate estimate, range coding, context) are marked too (eager
memory is close to, not equal to, the traced functions').
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time



def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


class StageRecorder:
    """Exact per-stage peak RSS: the kernel's high-water mark, reset as each stage starts.

    Nested stages: the outer stage's peak is the max of what its inner stages reached and of
    its own time outside them."""

    def __init__(self):
        self.rows = []
        self.stack = []  # per open stage: [name, peak so far, rss at start, start time]

    @staticmethod
    def _reset():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @contextlib.contextmanager
    def stage(self, name):
        hwm = _status_mib("VmHWM")
        for entry in self.stack:  # what the outer stages reached up to now
            entry[1] = max(entry[1], hwm)
        self._reset()
        entry = [name, 0.0, _status_mib("VmRSS"), time.perf_counter()]
        self.stack.append(entry)
        try:
            yield
        finally:
            entry[1] = max(entry[1], _status_mib("VmHWM"))
            self.stack.pop()
            for outer in self.stack:
                outer[1] = max(outer[1], entry[1])
            self.rows.append(dict(stage=" > ".join([e[0] for e in self.stack] + [name]),
                                  peak_mib=round(entry[1], 1), start_mib=round(entry[2], 1),
                                  end_mib=round(_status_mib("VmRSS"), 1),
                                  seconds=round(time.perf_counter() - entry[3], 2)))
            self._reset()

    def wrap(self, owner, attribute, label):
        """Mark every call of owner.attribute (a class's method or a module's function) as a
        stage; label(args) -> the stage's name."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            with self.stage(label(args)):
                return original(*args, **kwargs)
        setattr(owner, attribute, wrapped)


def instrument(recorder, model, eager):
    """Mark the stages of coding with `model` (a ScalableModel instance)."""
    import codec.streams
    import pipeline.evaluation
    from models.entropy.coding import ChannelCoder, IndexedCoder
    from models.entropy.hyperprior import HyperpriorEntropyModel
    names = model.config.layer_names
    cls = type(model)
    recorder.wrap(cls, "_analyse", lambda a: f"analysis {names[a[1]]}")
    recorder.wrap(cls, "_synthesize", lambda a: f"synthesis {names[a[1]]}")
    recorder.wrap(codec.streams, "write_png", lambda a: "png write")
    recorder.wrap(pipeline.evaluation, "measure", lambda a: "metrics")

    def traced(kind):
        original = getattr(cls, f"_{kind}")

        def marked(self, k):
            function = original(self, k)
            return lambda *args: _in_stage(recorder, f"{kind} {names[k]}", function, args)
        setattr(cls, f"_{kind}", marked)
    traced("encoder")
    traced("decoder")
    if eager:
        import tensorflow as tf
        tf.config.run_functions_eagerly(True)
        recorder.wrap(cls, "predict_latent", lambda a: "prediction")
        recorder.wrap(cls, "extend_context", lambda a: "context concat")
        recorder.wrap(HyperpriorEntropyModel, "_coding_indexes", lambda a: "integer hyper-synthesis")
        recorder.wrap(HyperpriorEntropyModel, "_main_model", lambda a: "rate estimate (model)")
        recorder.wrap(IndexedCoder, "encode", lambda a: "range encode")
        recorder.wrap(IndexedCoder, "decode", lambda a: "range decode")
        recorder.wrap(ChannelCoder, "encode", lambda a: "side encode")
        recorder.wrap(ChannelCoder, "symbols", lambda a: "side symbols")
        for entropy_model in model.entropy:
            if hasattr(entropy_model, "hyper_analysis"):
                transform = entropy_model.hyper_analysis
                transform.call = _marked_call(recorder, "hyper analysis", transform.call)


def _marked_call(recorder, name, call):
    return lambda *args, **kwargs: _in_stage(recorder, name, call, args, kwargs)


def _in_stage(recorder, name, function, args, kwargs=None):
    with recorder.stage(name):
        return function(*args, **(kwargs or {}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="3000x2000", help="WxH")
    p.add_argument("--tile", type=int, default=None, help="default: models.tiling.DEFAULT_TILE")
    p.add_argument("--eager", action="store_true", help="also mark the coding functions' parts")
    p.add_argument("--out", help="JSON file of the stage table")
    args = p.parse_args(argv)
    from bench import results_io
    from bench.speed import DEFAULT_FILTERS, build_codec, photo
    from models.tiling import DEFAULT_TILE
    from pipeline.evaluation import evaluate_image
    width, height = (int(v) for v in args.size.split("x"))
    recorder = StageRecorder()
    with recorder.stage("setup"):
        codec = build_codec(DEFAULT_FILTERS, (250.0, 100.0, 50.0, 25.0), "hyperprior")
        codec.tile = DEFAULT_TILE if args.tile is None else args.tile
        image = photo(width, height)
    instrument(recorder, codec.model, args.eager)
    with tempfile.TemporaryDirectory() as folder, recorder.stage("evaluate_image"):
        evaluate_image(codec, "photo", [image] * len(DEFAULT_FILTERS), folder,
                       len(DEFAULT_FILTERS))
    report = dict(size=args.size, megapixels=width * height / 1e6, tile=codec.tile,
                  eager=args.eager,
                  command=results_io.shown_command("bench.memory_stages", sys.argv[1:]),
                  peak_rss_mib=_status_mib("VmHWM"), stages=recorder.rows,
                  overall_peak_mib=max(r["peak_mib"] for r in recorder.rows))
    for row in recorder.rows:
        print(f"{row['peak_mib']:9.1f} {row['start_mib']:9.1f} {row['end_mib']:9.1f} "
              f"{row['seconds']:8.2f}  {row['stage']}")
    print(f"overall peak {report['overall_peak_mib']:.1f} MiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
