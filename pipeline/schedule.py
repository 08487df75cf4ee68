"""The learning-rate schedules of training, functions of the global step.

Keras' Adam keeps its rate in a `learning_rate` variable that is saved in every checkpoint, so
restoring one brings back the rate of the run that wrote it. The driver therefore sets that
variable from the schedule before every step (`value(step)`): a resumed run follows the flags
of the rerun and continues the schedule exactly, and the checkpoints keep the structure they
always had.
"""

SCHEDULES = ("constant", "decay")


class StepSchedule:
    """`learning_rate` up to the decay step, then `learning_rate * decay_factor`.

    kind "constant": no decay (the paper's constant rate). kind "decay": the updates from step
    round(decay_start_fraction * last_step) on (steps counted from 0 before each update) use
    the decayed rate.
    """

    def __init__(self, learning_rate, kind="constant", last_step=None,
                 decay_start_fraction=0.85, decay_factor=0.1):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}: use one of {', '.join(SCHEDULES)}")
        if kind == "decay" and last_step is None:
            raise ValueError("a decay schedule needs last_step")
        self.learning_rate = float(learning_rate)
        self.kind = kind
        self.last_step = last_step
        self.decay_start_fraction = float(decay_start_fraction)
        self.decay_factor = float(decay_factor)

    @property
    def decay_step(self):
        """The first step with the decayed rate (None for a constant schedule)."""
        if self.kind == "constant":
            return None
        return int(round(self.decay_start_fraction * self.last_step))

    def value(self, step):
        """The rate of the update made at `step` (the number of updates before it)."""
        if self.kind == "decay" and step >= self.decay_step:
            return self.learning_rate * self.decay_factor
        return self.learning_rate

    def describe(self):
        if self.kind == "constant":
            return f"learning rate {self.learning_rate:g} (constant)"
        return (f"learning rate {self.learning_rate:g}, x{self.decay_factor:g} from step "
                f"{self.decay_step}")
