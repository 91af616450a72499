"""Interactive figures for the book, built on anywidget.

Each figure's data is computed by attnlib in Python and drawn by JavaScript in the page, so the figures stay
interactive on the static website (no kernel) and, in a live notebook, recompute when a Python-side input
changes. Display one by making it the last expression of a cell.

* ``AttentionExplorer`` -- attention weights as a heatmap; layers, heads, causal vs bidirectional, temperature,
  and the weighted sum each query gets back.
* ``TileStepper`` -- FlashAttention, tile by tile: m, l, the rescale factor and the accumulator.
* ``ExamGrader`` -- the online softmax of one row, as a teacher grading exams in batches.
* ``KVCacheView`` -- decoding step by step: the cache grows, old rows are reused, work with and without it.
* ``AddNormView`` -- activation scale and gradient norm per layer, residual on/off, post-LN vs pre-LN.
* ``FeedForwardMemoryView`` -- an FFN as key-value memory: which slots fire for an input, what they add up to.
* ``ModelView`` -- every layer x head of an encoder as small heatmaps for a few sentences; click one to open it;
  attention weights or weight x ||value||.
* ``RooflineView`` -- standard attention and FlashAttention under a GPU's roofs: HBM bytes, arithmetic intensity
  and the time the roofline model implies, for a chosen n, d, SRAM size and block sizes.
* ``RopeView`` -- rotary positions in one plane: a query and a key turned by their positions; the score stays put
  when both shift.
* ``KVHeadsView`` -- which key/value heads each query head reads (MHA, GQA, MQA, MLA) and the KV-cache bytes of
  published models.
* ``RingView`` -- ring attention step by step: key/value shards travel around the ranks, each merges its m and l.
* ``BlockTableView`` -- continuous batching over a paged KV cache: block tables, the pool, blocks freed and
  reused, step by step.
"""

from .add_norm_view import AddNormView
from .attention_explorer import ALL_HEADS, AttentionExplorer
from .block_table_view import BlockTableView
from .exam_grader import ExamGrader
from .feed_forward_memory_view import FeedForwardMemoryView
from .kv_cache_view import KVCacheView
from .kv_heads_view import KVHeadsView
from .model_view import ModelView
from .ring_view import RingView
from .roofline_view import RooflineView
from .rope_view import RopeView
from .tile_stepper import TileStepper

__all__ = ["AttentionExplorer", "ALL_HEADS", "TileStepper", "ExamGrader", "KVCacheView", "AddNormView",
           "FeedForwardMemoryView", "ModelView", "RooflineView", "RopeView", "KVHeadsView", "RingView",
           "BlockTableView"]
