"""The roofline explorer: standard attention and FlashAttention under the roofs of a GPU.

Python computes a grid with ``attnlib.traffic`` (HBM bytes of standard attention, FlashAttention-1 and -2) and
``attnlib.roofline`` (their FLOPs, and the published peaks of three GPUs), for every choice the page offers:
sequence length n, head dimension d, on-chip memory (SRAM) size, block sizes, forward or forward + backward. The
browser picks the entry for the reader's choice and draws both attentions as points on a log-log roofline plot,
with the bytes, the arithmetic intensity and the time the model implies. It is a model: the points sit *on* the
roof, the fastest each algorithm could run on that GPU, never a measurement.

Measured points, if results files of ``benchmarks/bench_flash_gpu.py`` are given, are drawn at the same
arithmetic intensity as the modelled point of their algorithm, at the FLOP rate they reached: how far below the
roof a real kernel runs.

The shapes follow the GPU benchmark and the FlashAttention-2 and -3 papers: ``tokens`` = batch x n tokens in all
and a hidden size ``hidden`` = heads x d, so every n and d does the same amount of work per token and fills the GPU.
"""

from __future__ import annotations

import math
import numbers

import traitlets

from .. import _checks, roofline, traffic
from ._base import Figure, esm

ALGORITHMS = {"flash2": traffic.flash2_attention_traffic, "flash1": traffic.flash_attention_traffic}
PASSES = ("forward", "forward_backward")
# Lines of bench_flash_gpu.py whose algorithm this figure models: which modelled point each one is measured against.
MEASURED_LINES = {"attnlib triton": "flash2", "sdpa flash_attention": "flash2", "naive torch": "standard"}

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_HEAD_DIMS = (64, 128)
DEFAULT_SRAM_SIZES = (64 * 1024, 128 * 1024, traffic.A100_SRAM_BYTES, 256 * 1024)
DEFAULT_BLOCK_CHOICES = (64, 128, 256)
TOKENS, HIDDEN = 16384, 2048  # as benchmarks/bench_flash_gpu.py: 16k tokens per batch, hidden size 2048
BYTES_PER_ELEMENT = 2  # float16 / bfloat16, the precision of the tensor-core peaks

MAX_CHOICES = 8  # options per control: more would not fit one slider's labels or one menu legibly
MAX_GRID_TILES = 2**23  # (query block, key block) pairs the traffic model walks for the grid: ~2 s of Python
MAX_MEASURED_ROWS = 10_000  # rows of one results file (the benchmark writes a few hundred)
MAX_RESULTS = 16  # results files, one per GPU measured


def _choices(name: str, values, *, divides: int | None = None, what: str = "") -> list[int]:
    """A short, non-empty list of distinct positive integers, sorted; each dividing ``divides`` if given."""
    if isinstance(values, str | bytes) or not isinstance(values, list | tuple):
        raise TypeError(f"{name} must be a list of positive integers, got {type(values).__name__}")
    if not values or len(values) > MAX_CHOICES:
        raise ValueError(f"{name} must hold 1 to {MAX_CHOICES} choices, got {len(values)}")
    checked = [_checks.positive_int(f"{name}[{i}]", value) for i, value in enumerate(values)]
    if len(set(checked)) != len(checked):
        raise ValueError(f"{name} must not repeat a choice, got {checked}")
    if divides is not None:
        bad = [value for value in checked if divides % value]
        if bad:
            raise ValueError(f"{name} must divide {what} = {divides}, but {bad} do not")
    return sorted(checked)


def _tiles(n: int, blocks: tuple[int, int]) -> int:
    return math.ceil(n / blocks[0]) * math.ceil(n / blocks[1])


def _flash_entry(algorithm: str, shape: dict, sram_bytes: int, block_sizes) -> dict:
    """One FlashAttention point of the grid: FLOPs and bytes of the whole batch, forward and forward + backward."""
    count = ALGORITHMS[algorithm]
    entry = {}
    for pass_name in PASSES:
        backward = pass_name == "forward_backward"
        moved = count(**shape, sram_bytes=sram_bytes, bytes_per_element=BYTES_PER_ELEMENT, backward=backward,
                      block_sizes=block_sizes)
        entry[pass_name] = [roofline.flash_attention_flops(**shape, backward=backward), moved.total]
    return entry


def _paper_blocks(algorithm: str, d: int, sram_bytes: int) -> dict:
    """The (block_q, block_k) the traffic model uses by default, per pass: FlashAttention-1's rule from the SRAM
    size; FlashAttention-2 gives the large size to the block held through the inner loop (queries, forward)."""
    block_q, block_k = traffic.paper_block_sizes(d, sram_bytes // BYTES_PER_ELEMENT)
    forward = [block_k, block_q] if algorithm == "flash2" else [block_q, block_k]
    return {"forward": forward, "backward": [block_q, block_k]}


def compute_grid(lengths, head_dims, sram_sizes, block_choices, *, tokens: int = TOKENS, hidden: int = HIDDEN) -> dict:
    """Every point the figure can show, computed by ``attnlib.traffic`` and ``attnlib.roofline``.

    Keys: ``standard["n/d"]``, ``flash["algorithm/n/d/BQxBK"]`` (chosen blocks), ``flash["algorithm/n/d/sramS"]``
    (the paper's blocks for an SRAM of S bytes); each holds ``{pass: [flops, hbm_bytes]}`` for the whole batch
    (batch = tokens / n, heads = hidden / d). ``fits["d/S/BQxBK"]`` is "" when the chosen blocks fit in S bytes, else
    the traffic model's reason; ``blocks["algorithm/d/S"]`` the paper's ``{"forward": [block_q, block_k],
    "backward": [block_q, block_k]}``.
    """
    tokens, hidden = _checks.positive_int("tokens", tokens), _checks.positive_int("hidden", hidden)
    lengths = _choices("lengths", lengths, divides=tokens, what="tokens")
    head_dims = _choices("head_dims", head_dims, divides=hidden, what="hidden")
    sram_sizes = _choices("sram_sizes", sram_sizes)
    block_choices = _choices("block_choices", block_choices)
    pairs = [(block_q, block_k) for block_q in block_choices for block_k in block_choices]

    # The traffic model walks every tile; refuse a grid that would take minutes before walking any.
    walked = 0
    for n in lengths:
        for d in head_dims:
            chosen = sum(_tiles(n, pair) for pair in pairs)
            paper = sum(_tiles(n, traffic.paper_block_sizes(d, s // BYTES_PER_ELEMENT)) for s in sram_sizes)
            walked += len(ALGORITHMS) * 3 * (chosen + paper)  # forward, then forward + backward (two walks)
    if walked > MAX_GRID_TILES:
        raise ValueError(f"these choices make the traffic model walk {walked} tiles, at most {MAX_GRID_TILES}: use "
                         "fewer or shorter lengths, or larger blocks")

    grid = {"tokens": tokens, "hidden": hidden, "bytes_per_element": BYTES_PER_ELEMENT, "standard": {}, "flash": {},
            "fits": {}, "blocks": {}}
    for d in head_dims:
        for sram_bytes in sram_sizes:
            for block_q, block_k in pairs:
                try:  # n = 1: only the check that the blocks fit on chip runs
                    traffic.flash_attention_traffic(1, 1, 1, d, sram_bytes=sram_bytes, backward=False,
                                                    bytes_per_element=BYTES_PER_ELEMENT,
                                                    block_sizes=(block_q, block_k))
                    reason = ""
                except ValueError as error:
                    reason = str(error)
                grid["fits"][f"{d}/{sram_bytes}/{block_q}x{block_k}"] = reason
            for algorithm in ALGORITHMS:
                grid["blocks"][f"{algorithm}/{d}/{sram_bytes}"] = _paper_blocks(algorithm, d, sram_bytes)
    for n in lengths:
        for d in head_dims:
            shape = {"batch": tokens // n, "heads": hidden // d, "n": n, "d": d}
            grid["standard"][f"{n}/{d}"] = {
                pass_name: [roofline.standard_attention_flops(**shape, backward=pass_name != "forward"),
                            traffic.standard_attention_traffic(**shape, bytes_per_element=BYTES_PER_ELEMENT,
                                                               backward=pass_name != "forward").total]
                for pass_name in PASSES}
            for algorithm in ALGORITHMS:
                for block_q, block_k in pairs:
                    # The bytes do not depend on the SRAM size once the blocks are chosen; whether they fit does.
                    grid["flash"][f"{algorithm}/{n}/{d}/{block_q}x{block_k}"] = _flash_entry(
                        algorithm, shape, 2**40, (block_q, block_k))
                for sram_bytes in sram_sizes:
                    grid["flash"][f"{algorithm}/{n}/{d}/sram{sram_bytes}"] = _flash_entry(
                        algorithm, shape, sram_bytes, None)
    return grid


def _field(where: str, row: dict, name: str, kind):
    if name not in row:
        raise ValueError(f"{where} lacks {name!r} (a row of a GPU results file, as bench_flash_gpu.py writes it)")
    value = row[name]
    if kind is int:
        return _checks.positive_int(f"{where}[{name!r}]", value)
    if kind is bool:
        return _checks.flag(f"{where}[{name!r}]", value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{where}[{name!r}] must be a {kind.__name__}, got {value!r:.60}")
    return value


def measured_points(results, lengths, head_dims) -> tuple[list[dict], list[str]]:
    """The rows of GPU results files (as ``benchmarks/bench_flash_gpu.py`` writes them) this figure can draw.

    A row is drawn when it ran ("ok"), is not causal (the model has no causal mask), is of a line whose algorithm
    the model counts (``MEASURED_LINES``), at an n and d of the figure, on a GPU of ``roofline.GPUS``. Its FLOP
    rate is this model's FLOPs for its algorithm and shape divided by its measured time. Returns the points and
    one sentence for each file whose GPU has no roofline here.
    """
    if isinstance(results, dict):
        results = [results]
    if not isinstance(results, list | tuple):
        raise TypeError(f"measured must be a list of results dicts (as bench_flash_gpu.py writes), got "
                        f"{type(results).__name__}")
    if len(results) > MAX_RESULTS:
        raise ValueError(f"measured holds {len(results)} results; the figure draws at most {MAX_RESULTS} (one per GPU)")
    points, skipped = [], []
    for index, result in enumerate(results):
        where = f"measured[{index}]"
        if not isinstance(result, dict) or not isinstance(result.get("machine"), dict) \
                or not isinstance(result["machine"].get("device"), str):
            raise ValueError(f"{where} must be a results dict with machine['device'] (a GPU name), got "
                             f"{result!r:.100}")
        device = result["machine"]["device"]
        rows = result.get("rows")
        if not isinstance(rows, list) or len(rows) > MAX_MEASURED_ROWS:
            raise ValueError(f"{where}['rows'] must be a list of at most {MAX_MEASURED_ROWS} rows, got "
                             f"{type(rows).__name__}{f' of {len(rows)}' if isinstance(rows, list) else ''}")
        gpu_name = roofline.gpu_for_device(device)
        if gpu_name is None:
            skipped.append(f"{device}: no published roofline for this GPU in the figure, its results are not drawn")
            continue
        for r, row in enumerate(rows):
            at = f"{where}['rows'][{r}]"
            if not isinstance(row, dict):
                raise TypeError(f"{at} must be a dict, got {type(row).__name__}")
            line, status = _field(at, row, "line", str), _field(at, row, "status", str)
            pass_name, causal = _field(at, row, "pass", str), _field(at, row, "causal", bool)
            n, d = _field(at, row, "n", int), _field(at, row, "d", int)
            if status != "ok" or causal or line not in MEASURED_LINES or pass_name not in PASSES \
                    or n not in lengths or d not in head_dims:
                continue
            batch, heads = _field(at, row, "batch", int), _field(at, row, "heads", int)
            milliseconds = _checks.positive_float(f"{at}['ms']", row.get("ms"))
            algorithm = MEASURED_LINES[line]
            count = roofline.standard_attention_flops if algorithm == "standard" else roofline.flash_attention_flops
            flops = count(batch, heads, n, d, backward=pass_name == "forward_backward")
            points.append({"gpu": gpu_name, "device": device, "line": line, "algorithm": algorithm, "n": n, "d": d,
                           "pass": pass_name, "ms": milliseconds, "flops_per_second": flops / (milliseconds * 1e-3)})
    return points, skipped


def _gpu_state() -> list[dict]:
    return [{"name": gpu.name, "peak_flops": gpu.peak_flops, "hbm_bandwidth": gpu.hbm_bandwidth,
             "ridge_point": gpu.ridge_point, "source": gpu.source} for gpu in roofline.GPUS.values()]


class RooflineView(Figure):
    """Standard attention and FlashAttention as points under a GPU's roofs, over a precomputed grid of choices.

    ``RooflineView(lengths=..., head_dims=..., sram_sizes=..., block_choices=..., measured=None)`` computes the
    grid (``compute_grid``) for those choices; the page picks among them with sliders, buttons and a menu.
    ``measured`` is a list of results dicts written by ``benchmarks/bench_flash_gpu.py`` (or None): their rows are
    drawn as measured points (``measured_points``). The reader's choice is held in ``gpu``, ``n``, ``d``,
    ``sram_bytes``, ``block_sizes`` ([] = the paper's blocks for the SRAM size, else [block_q, block_k]),
    ``algorithm`` ("flash2" or "flash1") and ``pass_name`` ("forward" or "forward_backward"); each is checked
    against the grid. Changing ``lengths``, ``head_dims``, ``sram_sizes`` or ``block_choices`` recomputes it.
    """

    _esm = esm("roofline_view.js")
    _input_names = ("lengths", "head_dims", "sram_sizes", "block_choices")

    lengths = traitlets.List(traitlets.Int()).tag(sync=True)
    head_dims = traitlets.List(traitlets.Int()).tag(sync=True)
    sram_sizes = traitlets.List(traitlets.Int()).tag(sync=True)  # bytes
    block_choices = traitlets.List(traitlets.Int()).tag(sync=True)
    grid = traitlets.Dict().tag(sync=True)
    gpus = traitlets.List().tag(sync=True)  # [{name, peak_flops, hbm_bandwidth, ridge_point, source}]
    measured = traitlets.List().tag(sync=True)  # measured_points' points
    measured_skipped = traitlets.List(traitlets.Unicode()).tag(sync=True)
    gpu = traitlets.Unicode("H100 SXM5").tag(sync=True)
    n = traitlets.Int(0).tag(sync=True)
    d = traitlets.Int(0).tag(sync=True)
    sram_bytes = traitlets.Int(0).tag(sync=True)
    block_sizes = traitlets.List(traitlets.Int()).tag(sync=True)
    algorithm = traitlets.Unicode("flash2").tag(sync=True)
    pass_name = traitlets.Unicode("forward").tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, *, lengths=DEFAULT_LENGTHS, head_dims=DEFAULT_HEAD_DIMS, sram_sizes=DEFAULT_SRAM_SIZES,
                 block_choices=DEFAULT_BLOCK_CHOICES, measured=None, gpu: str = "H100 SXM5", n: int | None = None,
                 d: int | None = None, sram_bytes: int | None = None, block_sizes=(), algorithm: str = "flash2",
                 pass_name: str = "forward", title: str = "", **kwargs):
        super().__init__(**kwargs)
        self._ready = False  # the inputs set below must not each recompute the grid
        if not isinstance(block_sizes, list | tuple) or len(block_sizes) not in (0, 2):
            raise ValueError(f"block_sizes must be () (the paper's blocks for the SRAM size) or (block_q, block_k), "
                             f"got {block_sizes!r:.60}")
        block_sizes = [_checks.positive_int(f"block_sizes[{i}]", size) for i, size in enumerate(block_sizes)]
        if not isinstance(title, str):
            raise TypeError(f"title must be a str, got {type(title).__name__}")
        # Everything is checked before the grid, which takes seconds, is computed.
        given = (lengths, head_dims, sram_sizes, block_choices)
        lengths, head_dims = _choices("lengths", lengths), _choices("head_dims", head_dims)
        sram_sizes, block_choices = _choices("sram_sizes", sram_sizes), _choices("block_choices", block_choices)
        for name, value, options in (("gpu", gpu, list(roofline.GPUS)), ("n", n, lengths), ("d", d, head_dims),
                                     ("sram_bytes", sram_bytes, sram_sizes), ("algorithm", algorithm, ALGORITHMS),
                                     ("pass_name", pass_name, PASSES)):
            if value is not None:
                self._one_of(name, value, list(options))
        if any(size not in block_choices for size in block_sizes):
            raise ValueError(f"block_sizes must be () (the paper's blocks for the SRAM size) or (block_q, block_k) "
                             f"with both in block_choices = {block_choices}, got {tuple(block_sizes)}")
        points, skipped = measured_points([] if measured is None else measured, lengths, head_dims)
        grid = compute_grid(*given)
        with self.hold_sync():
            self.lengths, self.head_dims, self.sram_sizes, self.block_choices = (
                lengths, head_dims, sram_sizes, block_choices)
            self.grid, self.gpus, self.measured, self.measured_skipped = grid, _gpu_state(), points, skipped
            self._measured_source = [] if measured is None else measured
            self.gpu = gpu
            self.n = lengths[len(lengths) // 2] if n is None else n
            self.d = head_dims[0] if d is None else d
            default_sram = traffic.A100_SRAM_BYTES if traffic.A100_SRAM_BYTES in sram_sizes else sram_sizes[-1]
            self.sram_bytes = default_sram if sram_bytes is None else sram_bytes
            self.block_sizes = block_sizes
            self.algorithm, self.pass_name, self.title = algorithm, pass_name, title
        self._ready = True

    # --- the reader's choice, checked against the grid ---------------------------------------------------------

    @staticmethod
    def _one_of(name: str, value, options):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral | str) or value not in options:
            raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
        return value

    @traitlets.validate("gpu")
    def _check_gpu(self, proposal):
        return self._one_of("gpu", proposal["value"], list(roofline.GPUS))

    @traitlets.validate("n")
    def _check_n(self, proposal):
        return self._one_of("n", proposal["value"], self.lengths)

    @traitlets.validate("d")
    def _check_d(self, proposal):
        return self._one_of("d", proposal["value"], self.head_dims)

    @traitlets.validate("sram_bytes")
    def _check_sram(self, proposal):
        return self._one_of("sram_bytes", proposal["value"], self.sram_sizes)

    @traitlets.validate("algorithm")
    def _check_algorithm(self, proposal):
        return self._one_of("algorithm", proposal["value"], list(ALGORITHMS))

    @traitlets.validate("pass_name")
    def _check_pass(self, proposal):
        return self._one_of("pass_name", proposal["value"], list(PASSES))

    @traitlets.validate("block_sizes")
    def _check_block_sizes(self, proposal):
        value = proposal["value"]
        if len(value) == 0:
            return value
        if len(value) != 2 or any(size not in self.block_choices for size in value):
            raise ValueError(f"block_sizes must be [] (the paper's blocks for the SRAM size) or [block_q, block_k] "
                             f"with both in block_choices = {self.block_choices}, got {value!r}")
        return value

    # --- a live kernel: new choices recompute the grid ---------------------------------------------------------

    @traitlets.validate("lengths", "head_dims", "sram_sizes", "block_choices")
    def _sorted_choices(self, proposal):
        return sorted(proposal["value"])  # the sliders step through them in order; compute_grid checks the rest

    def _recompute(self):
        if not getattr(self, "_ready", False):
            return None
        grid = compute_grid(self.lengths, self.head_dims, self.sram_sizes, self.block_choices)
        lengths, head_dims = self.lengths, self.head_dims
        points, skipped = measured_points(self._measured_source, lengths, head_dims)
        data = {"grid": grid, "measured": points, "measured_skipped": skipped}

        def keep(value, options):  # the reader's choice stays if it is still offered
            return value if value in options else sorted(options)[len(options) // 2]

        data.update(n=keep(self.n, lengths), d=keep(self.d, head_dims), sram_bytes=keep(self.sram_bytes,
                                                                                          self.sram_sizes))
        if any(size not in self.block_choices for size in self.block_sizes):
            data["block_sizes"] = []
        return data

    def point(self, algorithm: str | None = None) -> roofline.RooflinePoint:
        """The modelled point on screen: ``algorithm`` "standard", "flash2" or "flash1" (default: the one shown)."""
        algorithm = self.algorithm if algorithm is None else self._one_of(
            "algorithm", algorithm, ["standard", *ALGORITHMS])
        if algorithm == "standard":
            flops, hbm_bytes = self.grid["standard"][f"{self.n}/{self.d}"][self.pass_name]
        else:
            if self.block_sizes:
                block_q, block_k = self.block_sizes
                reason = self.grid["fits"][f"{self.d}/{self.sram_bytes}/{block_q}x{block_k}"]
                if reason:
                    raise ValueError(reason)
                key = f"{algorithm}/{self.n}/{self.d}/{block_q}x{block_k}"
            else:
                key = f"{algorithm}/{self.n}/{self.d}/sram{self.sram_bytes}"
            flops, hbm_bytes = self.grid["flash"][key][self.pass_name]
        return roofline.roofline_point(flops, hbm_bytes, self.gpu)
