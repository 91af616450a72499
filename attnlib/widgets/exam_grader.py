"""Online softmax over one row, told as a teacher grading exams in batches.

The teacher's desk holds one batch of papers. She keeps two numbers: the best mark so far ``m`` and the
running total ``l`` of exp(mark - m) over the papers graded. When a batch beats the best mark (80, then a
paper with 90), every term already in ``l`` was measured against the old best; instead of re-grading, she
multiplies ``l`` by one rescale factor, exp(m_old - m_new). Python runs ``attnlib.numpy.online_softmax_steps``; the
browser steps through the batches.
"""

from __future__ import annotations

import numpy as np
import traitlets

from .. import _checks
from ..numpy import SoftmaxState, online_softmax_steps, rescale_factor, softmax
from . import _validate
from ._base import Figure, esm, to_json_array

MAX_MARKS = 60  # one bar per paper; more than this and the bars and their labels stop being readable


class ExamGrader(Figure):
    """Step through the online softmax of ``marks`` (a 1-D list of numbers), ``batch_size`` at a time.

    The shares are softmax(marks / temperature); temperature 1 (the default) is the plain softmax of the
    marks. ``ExamGrader.story(seed)`` makes up marks with the shape of the story (best 80 in the first
    batch, a 90 in the second). Changing ``batch_size`` or ``temperature`` (or ``seed`` for a story)
    recomputes in Python.
    """

    _esm = esm("exam_grader.js")
    _input_names = ("batch_size", "temperature", "seed")

    marks = traitlets.List(traitlets.Float()).tag(sync=True)
    batch_size = traitlets.Int(10).tag(sync=True)
    temperature = traitlets.Float(1.0).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    batches = traitlets.List().tag(sync=True)  # one dict per batch: the note before and after grading it
    shares = traitlets.List().tag(sync=True)  # softmax from the final note: exp(x - m) / l
    reference = traitlets.List().tag(sync=True)  # attnlib.numpy.softmax of the whole row at once
    max_error = traitlets.Float(0.0).tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)  # the batch on screen (the reader moves it)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, marks, *, batch_size: int = 10, temperature: float = 1.0, step: int = 0, title: str = "",
                 **kwargs):
        super().__init__(**kwargs)
        self._story = None  # (n_batches, batch_size) when the marks came from story(seed): seed redraws them
        data = self._data(marks, batch_size, temperature)
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            self.step, self.title = step, str(title)

    @staticmethod
    def _data(marks, batch_size, temperature) -> dict:
        batch_size = _checks.positive_int("batch_size", batch_size)
        temperature = _checks.positive_float("temperature", temperature)

        def one_row(shape):
            if len(shape) != 1:
                raise ValueError(f"marks must be 1-D (one row of scores), got shape {shape}")
            if shape[0] > MAX_MARKS:
                raise ValueError(f"marks has {shape[0]} entries; at most {MAX_MARKS} can be drawn legibly")

        marks = _validate.as_numpy("marks", marks, check_shape=one_row)
        with np.errstate(over="ignore"):  # an overflow is reported just below, by name
            x = marks / temperature  # the row whose softmax the teacher computes
        if not np.isfinite(x).all():
            raise ValueError(f"temperature = {temperature} is too small for these marks: marks / temperature "
                             f"overflows to infinity (largest mark {np.abs(marks).max():.4g})")
        states = online_softmax_steps(x, batch_size)
        batches, previous = [], SoftmaxState.empty()
        for index, state in enumerate(states):
            start, end = index * batch_size, min((index + 1) * batch_size, len(x))
            rescale = float(rescale_factor(previous.m, state.m))  # 0 for the first batch: nothing to correct
            batch_sum = float(np.exp(x[start:end] - state.m).sum())  # this batch's terms, against the new best
            batches.append({
                "start": start, "end": end, "batch_best": float(marks[start:end].max()),
                "m_old": None if np.isneginf(previous.m) else float(previous.m), "m_new": float(state.m),
                "l_old": float(previous.l), "rescale": rescale, "batch_sum": batch_sum, "l_new": float(state.l),
            })
            previous = state
        shares = states[-1].probabilities(x)
        reference = softmax(x)
        return {"marks": marks.tolist(), "batch_size": batch_size, "temperature": temperature,
                "batches": [{name: float(f"{value:.10g}") if isinstance(value, float) else value
                             for name, value in batch.items()} for batch in batches],  # 10 significant digits
                "shares": to_json_array(shares), "reference": to_json_array(reference),
                "max_error": float(np.abs(shares - reference).max()), "step": 0}

    @traitlets.validate("step")
    def _check_step(self, proposal):
        return _validate.index("step", proposal["value"], len(self.batches), what="batches")

    @classmethod
    def story(cls, seed: int = 0, *, n_batches: int = 3, batch_size: int = 10, **options) -> ExamGrader:
        """Made-up integer marks shaped like the story: the first batch's best is 80, the second batch has a
        90, later batches stay below 90. ``grader.seed = ...`` draws new marks."""
        grader = cls(cls._story_marks(seed, n_batches, batch_size), batch_size=batch_size, **options)
        grader.seed = seed  # not a story yet, so this does not redraw
        grader._story = (n_batches, batch_size)
        return grader

    @staticmethod
    def _story_marks(seed, n_batches, batch_size) -> list[float]:
        seed = _validate.seed(seed)
        n_batches = _checks.positive_int("n_batches", n_batches)
        batch_size = _checks.positive_int("batch_size", batch_size)
        if n_batches < 2:
            raise ValueError(f"n_batches must be at least 2 for the story (80, then a 90), got {n_batches}")
        if n_batches * batch_size > MAX_MARKS:  # before drawing them
            raise ValueError(f"n_batches * batch_size = {n_batches} * {batch_size} marks; at most {MAX_MARKS} can be "
                             "drawn legibly")
        rng = np.random.default_rng(seed)
        batches = []
        for best in [80, 90] + [int(rng.integers(70, 90)) for _ in range(n_batches - 2)]:
            batch = rng.integers(45, best, size=batch_size)  # (batch_size,) below the batch's best...
            batch[rng.integers(batch_size)] = best  # ...and one paper at exactly the best
            batches.append(batch)
        return np.concatenate(batches).astype(float).tolist()

    def _recompute(self):
        # A story's marks are a function of its seed (the same seed gives the same papers, whatever the
        # batch size); marks given directly are kept.
        marks = self.marks if self._story is None else self._story_marks(self.seed, *self._story)
        return self._data(marks, self.batch_size, self.temperature)
