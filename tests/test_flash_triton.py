"""The Triton FlashAttention kernels against PyTorch's scaled_dot_product_attention.

Without CUDA the kernels run under Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 before triton is
imported), so every test here except the ``gpu`` ones runs on any Linux machine. The interpreter is slow, so
the shapes are small; together they still cover ragged lengths, n_q != n_k, causal and not, several tile shapes
and head dims 32/64, in float32 and float16. (bfloat16 ``tl.dot`` is wrong under the interpreter: GPU only.)
"""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlib import tiling
from attnlib.torch import attention as at_attention
from attnlib.torch import causal_mask, flash_attention, flash_triton

pytestmark = pytest.mark.skipif(
    not flash_triton.available(), reason="triton is not importable here, so backend='triton' cannot run"
)

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: compiled-kernel tests need a GPU (the interpreter ones ran)"
)


def random_qkv(shape_q, n_k, dtype, device="cpu", seed=0):
    generator = torch.Generator(device=device).manual_seed(seed)
    *batch, n_q, d = shape_q
    q = torch.randn(*batch, n_q, d, generator=generator, device=device, dtype=torch.float32)
    k = torch.randn(*batch, n_k, d, generator=generator, device=device, dtype=torch.float32)
    v = torch.randn(*batch, n_k, d, generator=generator, device=device, dtype=torch.float32)
    grad_output = torch.randn(*batch, n_q, d, generator=generator, device=device, dtype=torch.float32)
    return [x.to(dtype) for x in (q, k, v, grad_output)]


def sdpa_with_grads(q, k, v, grad_output, causal, scale):
    """SDPA's output and gradients, causal aligned bottom-right (the library's convention) through an explicit mask."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device) if causal else None
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    output.backward(grad_output)
    return output.detach(), q.grad, k.grad, v.grad


def reference_lse(q, k, causal, scale):
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale  # (..., n_q, n_k)
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device), float("-inf"))
    return torch.logsumexp(scores, dim=-1)


def triton_with_grads(q, k, v, grad_output, causal, scale, **blocks):
    output, lse = flash_triton.forward(q, k, v, causal, scale, **blocks)
    return (output, *flash_triton.backward(q, k, v, output, lse, grad_output, causal, scale, **blocks)), lse


def max_error(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_within_authors_rule(ours, low_precision, reference, eps):
    """The FlashAttention authors' rule: our error vs an accurate reference <= 2x PyTorch's own error + eps."""
    for name, mine, theirs, exact in zip(("output", "dq", "dk", "dv"), ours, low_precision, reference, strict=True):
        assert mine.dtype == theirs.dtype
        allowed = 2 * max_error(theirs, exact) + eps
        assert max_error(mine, exact) <= allowed, f"{name}: error {max_error(mine, exact):.3g} > allowed {allowed:.3g}"


# (n_q, n_k, d, causal, block_q, block_k): ragged lengths, both n_q < n_k and n_q > n_k, one query (decoding),
# square and rectangular tiles. None = the default interpreter tile (32 x 32).
FLOAT32_CASES = [
    (64, 64, 32, False, None, None),
    (77, 77, 32, True, None, None),
    (50, 130, 64, True, 16, 32),
    (130, 70, 32, False, 32, 16),
    (1, 77, 32, True, None, None),
    (96, 160, 32, True, 32, 64),
    (200, 256, 64, False, 64, 32),
]


@pytest.mark.parametrize(("n_q", "n_k", "d", "causal", "block_q", "block_k"), FLOAT32_CASES)
def test_float32_forward_lse_and_gradients_match_sdpa(n_q, n_k, d, causal, block_q, block_k):
    q, k, v, grad_output = random_qkv((1, 2, n_q, d), n_k, torch.float32, seed=n_q + n_k)
    scale = d**-0.5
    (output, dq, dk, dv), lse = triton_with_grads(q, k, v, grad_output, causal, scale, block_q=block_q, block_k=block_k)
    # Reference in float64 so that any error we see is the kernel's.
    expected = sdpa_with_grads(*(x.double() for x in (q, k, v, grad_output)), causal, scale)

    assert output.dtype == torch.float32 and output.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:-1]
    for name, got, want in zip(("output", "dq", "dk", "dv"), (output, dq, dk, dv), expected, strict=True):
        assert max_error(got, want) < 2e-5, f"{name}: max error {max_error(got, want):.3g}"
    assert max_error(lse, reference_lse(q, k, causal, scale)) < 2e-5


FLOAT16_CASES = [
    (77, 77, 64, True, None, None),
    (256, 256, 32, False, 64, 64),
    (100, 200, 32, True, 16, 64),
    (150, 90, 64, False, 32, 32),
]


@pytest.mark.parametrize(("n_q", "n_k", "d", "causal", "block_q", "block_k"), FLOAT16_CASES)
def test_float16_within_twice_sdpa_error(n_q, n_k, d, causal, block_q, block_k):
    q, k, v, grad_output = random_qkv((1, 2, n_q, d), n_k, torch.float16, seed=n_q * n_k)
    scale = d**-0.5
    ours, lse = triton_with_grads(q, k, v, grad_output, causal, scale, block_q=block_q, block_k=block_k)
    reference = sdpa_with_grads(*(x.float() for x in (q, k, v, grad_output)), causal, scale)
    pytorch_half = sdpa_with_grads(q, k, v, grad_output, causal, scale)

    assert ours[0].dtype == torch.float16 and lse.dtype == torch.float32
    assert_within_authors_rule(ours, pytorch_half, reference, eps=1e-4)
    assert max_error(lse, reference_lse(q, k, causal, scale)) < 1e-3


@settings(max_examples=25)  # the interpreter is slow; test_every_causal_offset covers the alignments exhaustively
@given(
    n_q=st.integers(1, 70),
    extra_keys=st.integers(0, 40),
    causal=st.booleans(),
    block_q=st.sampled_from([16, 32, 64]),
    block_k=st.sampled_from([16, 32, 64]),
)
def test_every_length_and_tile_combination(n_q, extra_keys, causal, block_q, block_k):
    # Off-by-one errors in the block ranges (which key blocks are full, diagonal, ragged or skipped) show up as
    # wrong rows for some lengths only, so sweep lengths that do and do not divide the tiles.
    n_k = n_q + extra_keys
    q, k, v, grad_output = random_qkv((1, 1, n_q, 16), n_k, torch.float32, seed=n_q * 100 + n_k)
    ours, _ = triton_with_grads(q, k, v, grad_output, causal, 0.25, block_q=block_q, block_k=block_k)
    expected = sdpa_with_grads(*(x.double() for x in (q, k, v, grad_output)), causal, 0.25)
    for name, got, want in zip(("output", "dq", "dk", "dv"), ours, expected, strict=True):
        assert max_error(got, want) < 2e-5, f"{name}: max error {max_error(got, want):.3g}"


@pytest.mark.parametrize(("block_q", "block_k"), [(16, 32), (32, 16)])
def test_every_causal_offset(block_q, block_k):
    # With causal attention the kernels decide per tile whether it is skipped, masked (on the diagonal) or full.
    # Those decisions depend on offset = n_k - n_q modulo the tile sizes, so try every residue.
    n_q = 21
    for offset in range(0, max(block_q, block_k) + 1):  # every residue modulo both tile sizes
        q, k, v, grad_output = random_qkv((1, 1, n_q, 16), n_q + offset, torch.float32, seed=offset)
        ours, _ = triton_with_grads(q, k, v, grad_output, True, 0.25, block_q=block_q, block_k=block_k)
        expected = sdpa_with_grads(*(x.double() for x in (q, k, v, grad_output)), True, 0.25)
        for name, got, want in zip(("output", "dq", "dk", "dv"), ours, expected, strict=True):
            assert max_error(got, want) < 2e-5, f"offset {offset}, {name}: max error {max_error(got, want):.3g}"


def test_any_leading_dimensions_and_a_custom_scale():
    # (heads, n, d) with no batch, and a scale that is not 1/sqrt(d): the kernel must use the one it is given.
    q, k, v, grad_output = random_qkv((3, 40, 32), 56, torch.float32, seed=1)
    ours, _ = triton_with_grads(q, k, v, grad_output, True, 0.3)
    expected = sdpa_with_grads(*(x.double() for x in (q, k, v, grad_output)), True, 0.3)
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        assert max_error(got, want) < 2e-5


def test_rows_are_independent_of_the_tiling():
    # The same problem cut into different tiles must give the same answer to float32 rounding.
    q, k, v, _ = random_qkv((1, 1, 70, 32), 70, torch.float32, seed=2)
    small, _ = flash_triton.forward(q, k, v, True, 0.2, block_q=16, block_k=16)
    large, _ = flash_triton.forward(q, k, v, True, 0.2, block_q=64, block_k=32)
    assert max_error(small, large) < 1e-6


def test_lse_is_the_natural_log_logsumexp_of_the_scaled_scores():
    q, k, v, _ = random_qkv((1, 1, 33, 16), 45, torch.float32, seed=3)
    _, lse = flash_triton.forward(q, k, v, False, 0.25)
    expected = torch.logsumexp((q @ k.transpose(-1, -2)) * 0.25, dim=-1)  # (1, 1, 33)
    assert max_error(lse, expected) < 1e-5


@pytest.mark.parametrize(
    ("n_q", "n_k", "causal", "dtype"), [(45, 45, True, torch.float32), (30, 70, False, torch.float16)]
)
def test_flash_attention_triton_backend_trains_through_autograd(n_q, n_k, causal, dtype):
    # The public entry point: attnlib.torch.flash_attention(..., backend="triton") and loss.backward().
    q, k, v, grad_output = random_qkv((2, 3, n_q, 32), n_k, dtype, seed=5)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    output = flash_attention(q, k, v, causal=causal, backend="triton")
    (output.float() * grad_output.float()).sum().backward()  # the loss whose output gradient is grad_output

    reference = sdpa_with_grads(*(x.detach().double() for x in (q, k, v, grad_output)), causal, 32**-0.5)
    pytorch = sdpa_with_grads(q.detach(), k.detach(), v.detach(), grad_output, causal, 32**-0.5)
    ours = (output.detach(), q.grad, k.grad, v.grad)
    assert all(x.dtype == dtype for x in ours)
    # float32: as close as PyTorch's own float32 (plus rounding); float16: the authors' rule.
    assert_within_authors_rule(ours, pytorch, reference, eps=1e-4 if dtype == torch.float16 else 2e-5)

# ---------------------------------------------------------------------------------------------------------------
# The tiles the kernels really visit, recorded under the interpreter
# ---------------------------------------------------------------------------------------------------------------

# Each kernel calls one step function per tile. Under the interpreter a step is looked up in the module when it is
# called, so wrapping it records every (program, tile, mask flag) the kernel visits. For each step: the argument
# holding the offsets of the block its program owns, the start of the block it visits, and its compile-time flag.
STEPS = {
    "_forward_step": ("offs_q", "start_k", "MASKED"),
    "_backward_dq_step": ("offs_q", "start_k", "MASKED"),
    "_backward_dk_dv_step": ("offs_k", "start_q", "MASKED"),
}


def _as_int(value):
    return int(value.handle.data.reshape(-1)[0]) if hasattr(value, "handle") else int(value)


def _recording(original, visits, owned, visited, flag):
    parameters = inspect.signature(original.fn)  # the kernel source's own Python function

    def step(*args, **kwargs):
        call = parameters.bind(*args, **kwargs).arguments
        visits.append((_as_int(call[owned]), _as_int(call[visited]), bool(call[flag])))
        return original(*args, **kwargs)

    return step


def recorded_visits(monkeypatch, n_q, n_k, block_q, block_k, causal, window=None):
    """{step name: [(first row its program owns, first row of the visited block, flag), ...]} for one forward and
    one backward call of the kernels with these tiles."""
    visits = {name: [] for name in STEPS}
    for name, arguments in STEPS.items():
        monkeypatch.setattr(flash_triton, name, _recording(getattr(flash_triton, name), visits[name], *arguments))
    q, k, v, grad_output = random_qkv((1, 1, n_q, 16), n_k, torch.float32, seed=n_q + n_k)
    output, lse = flash_triton.forward(q, k, v, causal, 0.25, window=window, block_q=block_q, block_k=block_k)
    flash_triton.backward(q, k, v, output, lse, grad_output, causal, 0.25, window=window, block_q=block_q,
                          block_k=block_k)
    monkeypatch.undo()
    return visits


def plan_of(visits, n_q, n_k, block_q, block_k, *, by_key_block=False):
    """The visits as a (query blocks, key blocks) plan: FULL or MASKED as the kernel's flag said, SKIPPED if never
    visited. Each tile may be visited once only."""
    plan = np.full((-(-n_q // block_q), -(-n_k // block_k)), tiling.SKIPPED)
    for owned, visited, flagged in visits:
        i, j = (visited // block_q, owned // block_k) if by_key_block else (owned // block_q, visited // block_k)
        assert plan[i, j] == tiling.SKIPPED, f"tile ({i}, {j}) visited twice"
        plan[i, j] = tiling.MASKED if flagged else tiling.FULL
    return plan


def diagonal_of_whole_key_blocks(n_q, n_k, block_q, block_k, causal, window=None):
    """Tiles in which the causal mask (or the window) hides some (query, key) pair, keys counted up to the end of
    their whole block.

    The dK/dV pass loads its key block once, with a bounds mask, so its per-tile flag is about the diagonal and the
    window's edge only."""
    blocks = (-(-n_q // block_q), -(-n_k // block_k))
    rows = np.arange(n_q)[:, None] + (n_k - n_q)  # absolute position of each query
    keys = np.arange(blocks[1] * block_k)[None, :]
    visible = keys <= rows if causal else np.ones((n_q, blocks[1] * block_k), bool)
    if window is not None:
        visible = visible & (keys > rows - window)
    return np.array([[not visible[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k].all()
                      for j in range(blocks[1])] for i in range(blocks[0])])


TILE_CASES = [  # (n_q, n_k, block_q, block_k, causal, window): square, fewer queries than keys, ragged, one query,
    # not causal; and sliding windows shorter than a tile, a multiple of it, not a multiple, longer than n_q
    (64, 64, 16, 16, True, None),
    (40, 130, 16, 32, True, None),
    (77, 77, 32, 16, True, None),
    (70, 100, 16, 64, True, None),
    (1, 77, 16, 32, True, None),
    (90, 200, 32, 64, False, None),
    (64, 64, 16, 16, True, 5),
    (77, 77, 32, 16, True, 32),
    (40, 130, 16, 32, True, 21),
    (70, 100, 16, 64, True, 80),
]


@pytest.mark.skipif(not flash_triton.interpreted(), reason="compiled kernels cannot be wrapped; see the test below")
@pytest.mark.parametrize(("n_q", "n_k", "block_q", "block_k", "causal", "window"), TILE_CASES)
def test_kernels_visit_exactly_the_tiles_of_the_plan(monkeypatch, n_q, n_k, block_q, block_k, causal, window):
    visits = recorded_visits(monkeypatch, n_q, n_k, block_q, block_k, causal, window)
    expected = tiling.tile_plan(n_q, n_k, block_q, block_k, causal=causal, window=window)
    # The forward pass and the dQ pass walk the key blocks of attnlib.tiling's plan, in order of the keys: the
    # masked ones on the window's lower edge, the full ones unmasked, then the masked ones on the causal diagonal
    # and at the ragged end; skipped ones never.
    for name in ("_forward_step", "_backward_dq_step"):
        np.testing.assert_array_equal(plan_of(visits[name], n_q, n_k, block_q, block_k), expected, err_msg=name)
        for program in {owned for owned, _, _ in visits[name]}:
            walk = [start for owned, start, _ in visits[name] if owned == program]
            assert walk == sorted(walk), (name, program, walk)
    # The dK/dV pass walks the same tiles from the keys' side, and masks exactly those the diagonal or the window's
    # edge crosses.
    transposed = plan_of(visits["_backward_dk_dv_step"], n_q, n_k, block_q, block_k, by_key_block=True)
    np.testing.assert_array_equal(transposed != tiling.SKIPPED, expected != tiling.SKIPPED)
    diagonal = diagonal_of_whole_key_blocks(n_q, n_k, block_q, block_k, causal, window)
    np.testing.assert_array_equal(transposed == tiling.MASKED, diagonal & (expected != tiling.SKIPPED))


def test_tile_visits_are_recorded_on_a_gpu_machine_too():
    # With CUDA the kernels are compiled and cannot be wrapped: run the recording in a child process that sees no
    # GPU, so that conftest.py switches the interpreter on there.
    if flash_triton.interpreted():
        pytest.skip("the interpreter is on here: test_kernels_visit_exactly_the_tiles_of_the_plan ran in-process")
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"{__file__}::test_kernels_visit_exactly_the_tiles_of_the_plan"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(TILE_CASES)} passed" in result.stdout


# ---------------------------------------------------------------------------------------------------------------
# Malformed calls fail early, naming the argument
# ---------------------------------------------------------------------------------------------------------------


def good_inputs(n_q=8, n_k=8, d=16):
    return [torch.randn(1, 2, n, d) for n in (n_q, n_k, n_k)]


def triton(q, k, v, **options):
    return flash_attention(q, k, v, backend="triton", **options)


# The public door checks once; flash_triton.check_supported adds what only the kernel cannot do.
@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda q, k, v: (q[..., :12], k[..., :12], v[..., :12]), ValueError, "head dimension"),
        (lambda q, k, v: (q, k, v[..., :8]), ValueError, "head dimension"),
        (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "float32, float16 or bfloat16"),
        (lambda q, k, v: (q.bfloat16(), k.bfloat16(), v.bfloat16()), TypeError, "bfloat16 under Triton's CPU interp"),
        (lambda q, k, v: (q, k.half(), v), TypeError, "dtypes must match"),
        (lambda q, k, v: (q[0, 0, 0], k, v), ValueError, "q must have at least 2 dimension"),
        (lambda q, k, v: (q, k, v[..., :4, :]), ValueError, "same number of positions"),
        (lambda q, k, v: (q, k, v.numpy()), TypeError, "v is a NumPy array"),
    ],
)
def test_bad_tensors_raise_naming_the_problem(change, error, words):
    q, k, v = change(*good_inputs())
    if not flash_triton.interpreted() and q.dtype == torch.bfloat16:
        pytest.skip("bfloat16 is refused only under the interpreter")
    with pytest.raises(error, match=words):
        triton(q, k, v)


def test_bad_arguments_raise_naming_the_argument():
    q, k, v = good_inputs(n_q=8, n_k=4)
    with pytest.raises(ValueError, match="n_k >= n_q"):
        triton(q, k, v, causal=True)
    q, k, v = good_inputs()
    with pytest.raises(ValueError, match="scale"):
        triton(q, k, v, scale=-1.0)
    with pytest.raises(TypeError, match="causal must be True or False"):
        triton(q, k, v, causal="yes")
    with pytest.raises(ValueError, match="block_q must be a power of two >= 16"):
        triton(q, k, v, block_q=24)


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(flash_triton, "interpreted", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        triton(*good_inputs())


def test_attnlib_imports_without_triton_and_says_why_triton_is_needed():
    # A child process where `import triton` fails, as on a machine without it.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, attnlib.torch\n"
        "from attnlib.torch import flash_triton\n"
        "assert not flash_triton.available()\n"
        "q = torch.randn(1, 1, 4, 16)\n"
        "try:\n"
        "    attnlib.torch.flash_attention(q, q, q, backend='triton')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "needs the triton package" in result.stdout


def test_gpu_launch_configurations_are_valid(monkeypatch):
    # The autotuner's lists only run on a GPU; here, check that each builds and every tile is a legal tl.dot shape.
    monkeypatch.setattr(flash_triton, "interpreted", lambda: False)
    monkeypatch.setattr(flash_triton, "_autotuned_kernels", {})
    for name, kernel, blocks in [
        ("forward", flash_triton._forward_kernel, flash_triton._FORWARD_BLOCKS),
        ("dk_dv", flash_triton._backward_dk_dv_kernel, flash_triton._DK_DV_BLOCKS),
        ("dq", flash_triton._backward_dq_kernel, flash_triton._DQ_BLOCKS),
    ]:
        tuned, meta = flash_triton._kernel(name, kernel, blocks, None, None)
        assert meta == {} and len(tuned.configs) == len(blocks) > 1
        for config in tuned.configs:
            for size in (config.kwargs["BLOCK_Q"], config.kwargs["BLOCK_K"]):
                assert size >= 16 and size & (size - 1) == 0
    # Explicit tiles bypass the autotuner.
    assert flash_triton._kernel("forward", flash_triton._forward_kernel, [], 16, 64) == (
        flash_triton._forward_kernel, {"BLOCK_Q": 16, "BLOCK_K": 64}
    )

COMPILE_FOR_HOPPER = """
import os
os.environ["TRITON_INTERPRET"] = "0"  # decorate the kernels for the real compiler, not the interpreter
import triton
try:
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as error:
    raise SystemExit(f"skip: this triton has no ahead-of-time compile API ({error})")
if "nvidia" not in backends:
    raise SystemExit("skip: this triton has no NVIDIA backend")
from attnlib.torch import flash_triton

kernels = [  # (kernel, float16 pointers, float32 pointers, float32 scalars)
    (flash_triton._forward_kernel, ("Q", "K", "V", "Out"), ("Lse",), ("qk_scale",)),
    (flash_triton._backward_preprocess_kernel, ("Out", "dOut"), ("Delta",), ()),
    (flash_triton._backward_dk_dv_kernel, ("Q", "K", "V", "dOut", "dK", "dV"), ("Lse", "Delta"), ("qk_scale", "scale")),
    (flash_triton._backward_dq_kernel, ("Q", "K", "V", "dOut", "dQ"), ("Lse", "Delta"), ("qk_scale", "scale")),
]
for kernel, half_pointers, float_pointers, floats in kernels:
    constants = {"CAUSAL": True, "HEAD_DIM": 64, "BLOCK_Q": 64, "BLOCK_K": 64, "PRECISION": "tf32"}
    constants = {name: value for name, value in constants.items() if name in kernel.arg_names}
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in half_pointers or name in float_pointers:
            signature[name] = "*fp16" if name in half_pointers else "*fp32"
        else:
            signature[name] = "fp32" if name in floats else "i32"
    compiled = triton.compile(
        ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
        options={"num_warps": 4, "num_stages": 2},
    )
    uses_tensor_cores = "wgmma" in compiled.asm["ptx"]
    print(kernel.__name__, len(compiled.asm["cubin"]), uses_tensor_cores)
"""


def test_kernels_compile_for_a_hopper_gpu_without_one():
    # The interpreter checks what the kernels compute, not that the real compiler accepts them. Triton can compile
    # for a GPU that is not there (down to the machine code, through its bundled ptxas), so this runs anywhere.
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "skip:" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert set(compiled) == {"_forward_kernel", "_backward_preprocess_kernel", "_backward_dk_dv_kernel",
                             "_backward_dq_kernel"}
    # The matrix products of all three main kernels become Hopper tensor-core instructions (wgmma).
    assert all(compiled[name].endswith("True") for name in compiled if name != "_backward_preprocess_kernel")

# ---------------------------------------------------------------------------------------------------------------
# Compiled kernels on a CUDA device
# ---------------------------------------------------------------------------------------------------------------

GPU_CASES = [  # (batch, heads, n, d, causal)
    (2, 4, 128, 64, False),
    (1, 4, 1000, 128, True),
    (1, 2, 4097, 64, True),
    (1, 4, 8192, 64, False),
    (1, 4, 8192, 128, True),
]


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize(("batch", "heads", "n", "d", "causal"), GPU_CASES)
def test_gpu_within_twice_sdpa_error(batch, heads, n, d, causal, dtype, monkeypatch):
    assert not flash_triton.interpreted(), "with CUDA present the kernels must be compiled, not interpreted"
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # a float32 reference without TF32
    q, k, v, grad_output = random_qkv((batch, heads, n, d), n, dtype, device="cuda", seed=n + d)
    scale = d**-0.5
    ours, _ = triton_with_grads(q, k, v, grad_output, causal, scale)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        reference = sdpa_with_grads(*(x.float() for x in (q, k, v, grad_output)), causal, scale)
    pytorch_low = sdpa_with_grads(q, k, v, grad_output, causal, scale)
    assert_within_authors_rule(ours, pytorch_low, reference, eps=1e-3)


@pytest.mark.gpu
@requires_cuda
def test_gpu_float32_is_accurate():
    q, k, v, grad_output = random_qkv((1, 2, 333, 64), 500, torch.float32, device="cuda", seed=4)
    ours, _ = triton_with_grads(q, k, v, grad_output, True, 0.125)
    expected = sdpa_with_grads(*(x.double() for x in (q, k, v, grad_output)), True, 0.125)
    for got, want in zip(ours, expected, strict=True):
        assert max_error(got, want) < 1e-4



# ---------------------------------------------------------------------------------------------------------------
# Hostile numbers: the kernel follows the overflow policy of attention
# ---------------------------------------------------------------------------------------------------------------


def test_a_first_key_block_of_minus_infinity_gives_the_answer_not_nan():
    # Row 0's scores against the first 32 keys overflow to -inf in float32; its later keys are finite. The kernel
    # starts from m = -inf, so without the guard exp2(-inf - -inf) would poison the row with NaN.
    q = torch.zeros(1, 1, 16, 16)
    q[..., 0] = 1e19
    k = torch.zeros(1, 1, 64, 16)
    k[..., :32, 0] = -1e20
    k[..., 32:, 0] = torch.linspace(0.5, 1.5, 32)
    v = torch.randn(1, 1, 64, 16)
    expected, _ = at_attention(q, k, v)
    output = flash_attention(q, k, v, backend="triton", block_q=16, block_k=32)
    assert torch.isfinite(output).all()
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sign,words", [(1.0, r"overflowed .* to \+inf"), (-1.0, r"every visible score at -inf")])
def test_overflow_is_refused_as_attention_refuses_it(sign, words):
    q = torch.zeros(1, 1, 16, 16)
    q[..., 0] = 1e20
    with pytest.raises(OverflowError, match=words):
        flash_attention(q, sign * q, torch.ones(1, 1, 16, 16), backend="triton")
    with pytest.raises(OverflowError, match=words):
        at_attention(q, sign * q, torch.ones(1, 1, 16, 16))


def test_batch_dimensions_only_on_v():
    q, k = torch.randn(24, 16), torch.randn(40, 16)
    v = torch.randn(2, 3, 40, 16)
    expected, _ = at_attention(q, k, v, causal=True)
    torch.testing.assert_close(flash_attention(q, k, v, causal=True, backend="triton"), expected, rtol=1e-5, atol=1e-5)
