"""attnlib.depth: the wirings of Add & Norm, and the depth profile that chapter 6 and AddNormView both show."""

import numpy as np
import pytest
import torch

import attnlib.torch as at
from attnlib.depth import apply_block, depth_profile, fold_norms
from attnlib.widgets import AddNormView
from attnlib.widgets.add_norm_view import WIRINGS


@pytest.fixture(scope="module")
def stack():
    """Three float64 blocks and two unrelated batched inputs, as chapter 6 builds them (smaller)."""
    torch.manual_seed(0)
    blocks = [at.TransformerBlock(16, 4, 32).double() for _ in range(3)]
    x, other = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    return blocks, x, other


def test_residual_wirings_are_the_block_itself(stack):
    blocks, x, _ = stack
    pre_block = at.TransformerBlock(16, 4, 32, norm_first=True).double()
    pre_block.load_state_dict(blocks[0].state_dict())
    with torch.no_grad():
        assert torch.equal(apply_block(blocks[0], x, residual=True, norm="post"), blocks[0](x))
        assert torch.equal(apply_block(blocks[0], x, residual=True, norm="pre"), pre_block(x))


def test_the_other_wirings_by_hand(stack):
    blocks, x, _ = stack
    block = blocks[0]
    with torch.no_grad():
        plain = block.feed_forward(block.attention(x))
        add_only = x + block.attention(x)
        add_only = add_only + block.feed_forward(add_only)
        norm_only = block.norm2(block.feed_forward(block.norm1(block.attention(x))))
        pre_without_add = block.feed_forward(block.norm2(block.attention(block.norm1(x))))
        assert torch.equal(apply_block(block, x, residual=False, norm=None), plain)
        assert torch.equal(apply_block(block, x, residual=True, norm=None), add_only)
        assert torch.equal(apply_block(block, x, residual=False, norm="post"), norm_only)
        assert torch.equal(apply_block(block, x, residual=False, norm="pre"), pre_without_add)


def test_profile_measures_every_depth(stack):
    blocks, x, other = stack
    profile = depth_profile(blocks, x, residual=False, norm=None, seed=4, other=other)
    assert set(profile) == {"activation_scale", "gradient_norm", "similarity"}
    assert all(len(values) == len(blocks) + 1 for values in profile.values())
    h = x.clone().requires_grad_(True)
    states = [h]
    for block in blocks:
        h = block.feed_forward(block.attention(h))
        h.retain_grad()
        states.append(h)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (h * direction).sum().backward()
    np.testing.assert_allclose(profile["gradient_norm"], [float(s.grad.norm()) for s in states], rtol=1e-12)
    np.testing.assert_allclose(profile["activation_scale"], [float(s.detach().pow(2).mean().sqrt()) for s in states],
                               rtol=1e-12)
    assert profile["gradient_norm"][-1] == pytest.approx(float(direction.norm()))
    cosine = torch.nn.functional.cosine_similarity(x, other, dim=-1).mean()
    assert profile["similarity"][0] == pytest.approx(float(cosine))
    assert depth_profile(blocks, x, other=x)["similarity"] == pytest.approx([1.0] * 4)  # an input is like itself
    assert "similarity" not in depth_profile(blocks, x)


def test_the_figure_shows_the_chapters_numbers(stack):
    """Chapter 6 measures with depth_profile and shows AddNormView.from_blocks on the same blocks, input and seed:
    every number of the figure is one of the chapter's (to the figure's six significant digits)."""
    blocks, x, other = stack
    view = AddNormView.from_blocks(blocks, x, seed=7)
    for shown, (residual, norm_first) in zip(view.profiles, WIRINGS, strict=True):
        assert (shown["residual"], shown["norm_first"]) == (residual, norm_first)
        chapter = depth_profile(blocks, x, residual=residual, norm="pre" if norm_first else "post", seed=7,
                                other=other)
        for key in ("activation_scale", "gradient_norm"):
            np.testing.assert_allclose(shown[key], chapter[key], rtol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda blocks, x: depth_profile(blocks, x, norm="middle"), "norm"),
        (lambda blocks, x: depth_profile(blocks, x, residual="yes"), "residual"),
        (lambda blocks, x: depth_profile(blocks, x, seed=-1), "seed"),
        (lambda blocks, x: depth_profile(blocks, x, other=x[:1]), "other"),
        (lambda blocks, x: depth_profile([], x), "blocks"),
        (lambda blocks, x: depth_profile([torch.nn.Linear(16, 16)], x), "blocks"),
        (lambda blocks, x: depth_profile(blocks, x[..., :8]), "last dimension 16"),
        (lambda blocks, x: depth_profile(blocks, x.long()), "floating"),
        (lambda blocks, x: apply_block(blocks[0], x, norm="before"), "norm"),
    ],
)
def test_bad_input_names_the_argument(stack, call, match):
    blocks, x, _ = stack
    with pytest.raises((TypeError, ValueError), match=match):
        call(blocks, x)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_norms_keeps_the_function_of_a_pre_ln_block(bias):
    """gamma and beta of a pre-LN block move into W_Q, W_K, W_V, W_1 and their biases: same outputs, plain norms."""
    torch.manual_seed(3)
    block = at.TransformerBlock(16, 4, 32, norm_first=True, bias=bias).double()
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            if bias:
                norm.bias.uniform_(-0.5, 0.5)
    before = {name: value.clone() for name, value in block.state_dict().items()}
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    folded = fold_norms(block)
    with torch.no_grad():
        assert torch.allclose(folded(x), block(x), rtol=0, atol=1e-12)
        assert torch.allclose(folded(x, causal=True), block(x, causal=True), rtol=0, atol=1e-12)
    for norm in (folded.norm1, folded.norm2):
        assert torch.equal(norm.weight, torch.ones(16, dtype=torch.float64))
        assert norm.bias is None if not bias else torch.equal(norm.bias, torch.zeros(16, dtype=torch.float64))
    assert not torch.equal(folded.attention.w_q, block.attention.w_q)  # the weights really changed
    assert torch.equal(folded.attention.w_o, block.attention.w_o)  # W_O and W_2 do not read a norm
    assert torch.equal(folded.feed_forward.w_2, block.feed_forward.w_2)
    assert all(torch.equal(value, before[name]) for name, value in block.state_dict().items())  # block untouched


def test_fold_norms_refuses_post_ln_and_other_modules():
    with pytest.raises(ValueError, match="norm_first=True"):
        fold_norms(at.TransformerBlock(16, 4, 32))
    with pytest.raises(TypeError, match="TransformerBlock"):
        fold_norms(torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, norm_first=True))
