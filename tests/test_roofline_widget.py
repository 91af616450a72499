"""RooflineView: its grid holds exactly attnlib.traffic's bytes and attnlib.roofline's FLOPs, the reader's choice is
checked against the grid, bad input is refused naming the argument, and measured points from a (synthetic)
results file are read and drawn.

The drawing itself runs in Node.js on a minimal stand-in for the DOM (the browser tests see the built page, which
has no measured results): enough to check which entry the page picks and where measured points go.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from attnlib import roofline, traffic
from attnlib.widgets import RooflineView
from attnlib.widgets._base import esm
from attnlib.widgets.roofline_view import measured_points

SMALL = {"lengths": [512, 1024], "head_dims": [64, 128], "sram_sizes": [64 * 1024, 192 * 1024],
         "block_choices": [64, 128]}
H100_NAME = "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="module")
def view():
    return RooflineView(**SMALL, n=1024, d=64, sram_bytes=192 * 1024)


def synthetic_results(device=H100_NAME) -> dict:
    """A results dict shaped as benchmarks/bench_flash_gpu.py writes it, with made-up times."""
    def row(line, pass_name="forward", n=1024, d=64, causal=False, status="ok", ms=0.5):
        return {"line": line, "pass": pass_name, "causal": causal, "batch": 16384 // n, "heads": 2048 // d, "n": n,
                "d": d, "flops": 1.0, "status": status, "ms": ms if status == "ok" else None}
    return {"benchmark": "flash_gpu", "machine": {"device": device}, "dtype": "float16", "rows": [
        row("attnlib triton", ms=0.5),
        row("naive torch", ms=2.0),
        row("attnlib triton", pass_name="forward_backward", ms=2.5),
        row("attnlib triton", causal=True, ms=0.3),  # the model has no causal mask: not drawn
        row("sdpa cudnn_attention", ms=0.4),  # an algorithm the model does not count: not drawn
        row("attnlib triton", n=4096, ms=8.0),  # an n the figure does not offer: not drawn
        row("sdpa flash_attention", status="unavailable: RuntimeError: no kernel"),
    ]}


# --- the grid is attnlib's numbers ------------------------------------------------------------------------------


def test_grid_holds_traffic_bytes_and_roofline_flops_for_every_choice(view):
    grid = view.grid
    tokens, hidden = grid["tokens"], grid["hidden"]
    assert (tokens, hidden, grid["bytes_per_element"]) == (16384, 2048, 2)
    for n in SMALL["lengths"]:
        for d in SMALL["head_dims"]:
            shape = {"batch": tokens // n, "heads": hidden // d, "n": n, "d": d}
            for pass_name, backward in (("forward", False), ("forward_backward", True)):
                assert grid["standard"][f"{n}/{d}"][pass_name] == [
                    roofline.standard_attention_flops(**shape, backward=backward),
                    traffic.standard_attention_traffic(**shape, backward=backward).total]
                flops = roofline.flash_attention_flops(**shape, backward=backward)
                for algorithm, count in (("flash1", traffic.flash_attention_traffic),
                                         ("flash2", traffic.flash2_attention_traffic)):
                    for sram in SMALL["sram_sizes"]:
                        assert grid["flash"][f"{algorithm}/{n}/{d}/sram{sram}"][pass_name] == [
                            flops, count(**shape, sram_bytes=sram, backward=backward).total]
                    for block_q in SMALL["block_choices"]:
                        for block_k in SMALL["block_choices"]:
                            assert grid["flash"][f"{algorithm}/{n}/{d}/{block_q}x{block_k}"][pass_name] == [
                                flops, count(**shape, sram_bytes=2**40, backward=backward,
                                             block_sizes=(block_q, block_k)).total]
    assert len(grid["standard"]) == 4 and len(grid["flash"]) == 2 * 4 * (2 + 4)


def test_grid_says_which_blocks_fit_and_which_blocks_the_paper_picks(view):
    fits, blocks = view.grid["fits"], view.grid["blocks"]
    # On chip: 2 d (block_q + block_k) + block_q block_k elements of 2 bytes. d = 128, 64 KiB = 32768 elements:
    # 64 x 64 needs 2 * 128 * 128 + 4096 = 36864, too many; d = 64: 2 * 64 * 128 + 4096 = 20480 fit.
    assert fits["64/65536/64x64"] == "" and fits["64/196608/128x128"] == ""
    assert "need 36864 elements on chip" in fits["128/65536/64x64"]
    assert "sram_bytes = 65536 holds only 32768" in fits["128/65536/64x64"]
    # The paper's rule for M = 98304 elements, d = 64: B_c = ceil(M / 4d) = 384, B_r = min(384, 64) = 64.
    assert traffic.paper_block_sizes(64, 98304) == (64, 384)
    assert blocks["flash1/64/196608"] == {"forward": [64, 384], "backward": [64, 384]}
    assert blocks["flash2/64/196608"] == {"forward": [384, 64], "backward": [64, 384]}


def test_point_on_screen_is_roofline_point_of_the_grid_entry():
    view = RooflineView(**SMALL, n=512, d=128, sram_bytes=192 * 1024, gpu="A100 SXM4 80GB", pass_name="forward")
    shape = {"batch": 32, "heads": 16, "n": 512, "d": 128}
    standard = view.point("standard")
    expected = roofline.roofline_point(roofline.standard_attention_flops(**shape, backward=False),
                                       traffic.standard_attention_traffic(**shape, backward=False).total,
                                       "A100 SXM4 80GB")
    assert standard == expected and standard.bound == "memory"
    view.block_sizes = [128, 64]
    flash = view.point()
    assert flash.hbm_bytes == traffic.flash2_attention_traffic(**shape, backward=False, block_sizes=(128, 64)).total
    view.sram_bytes = 64 * 1024  # 128 x 64 with d = 128 needs 2 * 128 * 192 + 8192 elements: more than 32768
    with pytest.raises(ValueError, match="block_sizes .* need 57344 elements on chip"):
        view.point()


# --- the reader's choice ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value, match", [
    ("n", 2048, r"n must be one of \[512, 1024\], got 2048"),
    ("d", 32, r"d must be one of \[64, 128\], got 32"),
    ("sram_bytes", 100_000, r"sram_bytes must be one of \[65536, 196608\], got 100000"),
    ("gpu", "V100", r"gpu must be one of \['A100 SXM4 80GB', 'H100 SXM5', 'H200 SXM'\], got 'V100'"),
    ("algorithm", "flash3", r"algorithm must be one of \['flash2', 'flash1'\], got 'flash3'"),
    ("pass_name", "backward", r"pass_name must be one of \['forward', 'forward_backward'\], got 'backward'"),
    ("block_sizes", [64, 256], r"block_sizes must be \[\] .* block_choices = \[64, 128\], got \[64, 256\]"),
    ("block_sizes", [64], r"block_sizes must be \[\]"),
])
def test_a_choice_outside_the_grid_is_refused_naming_it(view, name, value, match):
    before = getattr(view, name)
    with pytest.raises(ValueError, match=match):
        setattr(view, name, value)
    assert getattr(view, name) == before


@pytest.mark.parametrize("options, error, match", [
    ({"lengths": "512"}, TypeError, "lengths must be a list of positive integers, got str"),
    ({"lengths": []}, ValueError, "lengths must hold 1 to 8 choices, got 0"),
    ({"lengths": [512, 512]}, ValueError, r"lengths must not repeat a choice, got \[512, 512\]"),
    ({"lengths": [1000]}, ValueError, r"lengths must divide tokens = 16384, but \[1000\] do not"),
    ({"lengths": [512, -4]}, ValueError, r"lengths\[1\] must be a positive integer, got -4"),
    ({"head_dims": [48]}, ValueError, r"head_dims must divide hidden = 2048, but \[48\] do not"),
    ({"sram_sizes": [1.5]}, TypeError, r"sram_sizes\[0\] must be a positive integer, got 1.5"),
    ({"block_choices": list(range(1, 10))}, ValueError, "block_choices must hold 1 to 8 choices, got 9"),
    ({"lengths": [16384], "block_choices": [8]}, ValueError, "make the traffic model walk .* tiles, at most"),
    ({"block_sizes": (64,)}, ValueError, r"block_sizes must be \(\) .* or \(block_q, block_k\)"),
    ({"block_sizes": (64, "a")}, TypeError, r"block_sizes\[1\] must be a positive integer"),
    ({"title": 3}, TypeError, "title must be a str, got int"),
    ({"measured": "results.json"}, TypeError, "measured must be a list of results dicts"),
    ({"measured": [{"rows": []}]}, ValueError, r"measured\[0\] must be a results dict with machine\['device'\]"),
    ({"heads": 2}, TypeError, r"RooflineView got unexpected keyword argument\(s\) \['heads'\]"),
])
def test_bad_options_are_refused_naming_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        RooflineView(**{**SMALL, **options})


def test_bad_measured_rows_are_refused_naming_the_field():
    results = synthetic_results()
    del results["rows"][0]["ms"]
    with pytest.raises(TypeError, match=r"measured\[0\]\['rows'\]\[0\]\['ms'\] must be a positive number, got None"):
        measured_points([results], [1024], [64])
    results = synthetic_results()
    results["rows"][1]["n"] = "1024"
    with pytest.raises(TypeError, match=r"measured\[0\]\['rows'\]\[1\]\['n'\] must be a positive integer"):
        measured_points([results], [1024], [64])
    results = synthetic_results()
    del results["rows"][2]["pass"]
    with pytest.raises(ValueError, match=r"measured\[0\]\['rows'\]\[2\] lacks 'pass'"):
        measured_points([results], [1024], [64])


@pytest.mark.parametrize("options, match", [
    ({"lengths": list(range(1, 10**6))}, "lengths must hold 1 to 8 choices, got 999999"),
    ({"lengths": [2**40]}, r"lengths must divide tokens = 16384, but \[1099511627776\] do not"),
    ({"measured": [{}] * 10**6}, "measured holds 1000000 results; the figure draws at most 16"),
    ({"measured": [{"machine": {"device": H100_NAME}, "rows": [{}] * 10**6}]},
     r"measured\[0\]\['rows'\] must be a list of at most 10000 rows, got list of 1000000"),
])
def test_huge_input_is_refused_before_any_work(options, match):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        RooflineView(**{**SMALL, **options})
    assert time.perf_counter() - start < 1.0


def test_a_bad_choice_is_refused_before_the_grid_is_computed():
    start = time.perf_counter()  # the default grid takes seconds to compute; the check comes first
    with pytest.raises(ValueError, match=r"n must be one of \[512, 1024, 2048, 4096, 8192, 16384\], got 3000"):
        RooflineView(n=3000)
    with pytest.raises(ValueError, match=r"block_sizes must be .* block_choices = \[64, 128, 256\], got \(64, 32\)"):
        RooflineView(block_sizes=(64, 32))
    assert time.perf_counter() - start < 1.0


def test_live_new_choices_recompute_the_grid_and_bad_ones_show_in_the_figure():
    view = RooflineView(**SMALL, n=1024)
    view.lengths = [1024, 2048]
    assert set(view.grid["standard"]) == {"1024/64", "2048/64", "1024/128", "2048/128"}
    assert view.n == 1024 and view.error == ""
    view.lengths = [4096, 512]  # 1024 is gone: the choice moves to one that is offered; the slider's order
    assert view.lengths == [512, 4096]
    assert view.n in (512, 4096) and "4096/64" in view.grid["standard"]
    grid = view.grid
    view.lengths = [1000]
    assert view.error.startswith("lengths = [1000]: lengths must divide tokens = 16384")
    assert view.grid is grid  # the figure keeps what it had


def test_state_is_plain_json(view):
    state = state_of(view)
    assert json.loads(json.dumps(state)) == state


# --- measured points ---------------------------------------------------------------------------------------------


def test_measured_rows_become_points_at_the_models_flops_over_the_measured_time():
    points, skipped = measured_points([synthetic_results(), synthetic_results("NVIDIA GeForce RTX 4090")],
                                      [512, 1024], [64, 128])
    assert skipped == ["NVIDIA GeForce RTX 4090: no published roofline for this GPU in the figure, its results are "
                       "not drawn"]
    assert [(p["line"], p["pass"]) for p in points] == [
        ("attnlib triton", "forward"), ("naive torch", "forward"), ("attnlib triton", "forward_backward")]
    batch_heads, n, d = 16 * 32, 1024, 64
    forward_flops = 4 * batch_heads * n * n * d  # two products of 2 n^2 d per (batch, head)
    flash, naive, both = points
    assert (flash["gpu"], flash["algorithm"], naive["algorithm"]) == ("H100 SXM5", "flash2", "standard")
    assert flash["flops_per_second"] == pytest.approx(forward_flops / 0.5e-3, rel=1e-12)
    assert naive["flops_per_second"] == pytest.approx(forward_flops / 2.0e-3, rel=1e-12)
    assert both["flops_per_second"] == pytest.approx(3.5 * forward_flops / 2.5e-3, rel=1e-12)  # 2.5 x forward back


NODE = shutil.which("node")

# A stand-in for the few DOM calls the figures make; enough to run render() in Node and read what it drew.
FAKE_DOM = r"""
class FakeNode {
  constructor(tag) { this.tag = tag; this.children = []; this.attributes = {}; this.dataset = {}; this.style = {};
                     this.listeners = {}; this.own = ""; }
  setAttribute(key, value) { this.attributes[key] = String(value); }
  getAttribute(key) { return this.attributes[key]; }
  appendChild(child) { this.children.push(child); return child; }
  replaceChildren() { this.children = []; }
  addEventListener(type, listener) { (this.listeners[type] ||= []).push(listener); }
  focus() {}
  set className(value) { this.attributes.class = value; }
  get className() { return this.attributes.class || ""; }
  set textContent(value) { this.own = String(value); this.children = []; }
  get textContent() { return this.own + this.children.map((child) => child.textContent).join(""); }
  all() { return [this, ...this.children.flatMap((child) => child.all())]; }
  byRole(role) { return this.all().filter((node) => node.dataset.role === role); }
  byClass(name) { return this.all().filter((node) => node.className.split(" ").includes(name)); }
  querySelector(selector) { return this.byRole(selector.match(/data-role="([^"]+)"/)[1])[0] || null; }
}
globalThis.document = { createElement: (tag) => new FakeNode(tag), createElementNS: (_, tag) => new FakeNode(tag) };
globalThis.FakeNode = FakeNode;
"""

DRIVER = r"""
import fs from "node:fs";
const states = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { default: widget } = await import(process.argv[3]);
const results = [];
for (const state of states) {
  const model = { get: (name) => state[name], set: (name, value) => { state[name] = value; }, on() {}, off() {},
                  save_changes() { throw new Error("no comm"); } };
  const el = new globalThis.FakeNode("div");
  widget.render({ model, el });
  const cell = (name) => el.byClass(name).map((node) => node.textContent)[0];
  const centre = (node) => node.tag === "circle" ? [+node.attributes.cx, +node.attributes.cy]
    : [+node.attributes.x + 6, +node.attributes.y + 6];
  results.push({
    error: el.byClass("attnlib-error").map((node) => node.textContent),
    intensity: { standard: cell("attnlib-rl-intensity-standard"), flash: cell("attnlib-rl-intensity-flash") },
    bytes: { standard: cell("attnlib-rl-bytes-standard"), flash: cell("attnlib-rl-bytes-flash") },
    model: Object.fromEntries(["model-standard", "model-flash"].flatMap(
      (role) => el.byRole(role).map((node) => [role, centre(node)]))),
    measured: el.byRole("measured").map((node) => ({ tag: node.tag, at: centre(node),
      title: node.children[0].textContent })),
    note: el.byRole("measured-note").map((node) => node.textContent)[0],
    misfit: el.byRole("misfit").map((node) => node.textContent)[0] || "",
  });
}
console.log(JSON.stringify(results));
"""


def draw(states: list[dict], tmp_path) -> list[dict]:
    """Run the figure's render() in Node for each state; what it drew, read back from the stand-in DOM."""
    module = tmp_path / "roofline_view.mjs"
    module.write_text(FAKE_DOM + esm("roofline_view.js"))
    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER)
    (tmp_path / "states.json").write_text(json.dumps(states))
    result = subprocess.run([NODE, str(driver), str(tmp_path / "states.json"), module.as_uri()],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def state_of(view) -> dict:
    """The synced traits the page reads (ipywidgets' own layout aside)."""
    return {name: getattr(view, name) for name in view.class_trait_names(sync=True)
            if not name.startswith("_") and name != "layout"}


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (the browser tests draw the book's figures)")
def test_the_page_draws_the_grid_entry_of_the_choice_and_the_measured_points(tmp_path):
    first_choice = {"n": 1024, "d": 64, "sram_bytes": 192 * 1024}
    choices = [{}, {"algorithm": "flash1"}, {"pass_name": "forward_backward"}, {"block_sizes": [64, 128]},
               {"gpu": "A100 SXM4 80GB"}, {"d": 128, "sram_bytes": 64 * 1024, "block_sizes": [64, 64]}]
    views = [RooflineView(**SMALL, measured=[synthetic_results()], **{**first_choice, **choice}) for choice in choices]
    assert len(views[0].measured) == 3
    drawn = draw([state_of(view) for view in views], tmp_path)
    for choice, view, picture in zip(choices, views, drawn, strict=True):
        assert picture["error"] == []
        assert picture["intensity"]["standard"] == f"{view.point('standard').intensity:.1f}", choice
        if picture["misfit"]:
            assert "need 36864 elements on chip" in picture["misfit"] and "model-flash" not in picture["model"]
        else:
            assert picture["intensity"]["flash"] == f"{view.point().intensity:.1f}", choice

    first, _, both, _, a100, _ = drawn
    # H100, n = 1024, d = 64, forward: the flash kernel's and naive attention's measured points, hollow, straight
    # below the modelled points of their algorithm (same intensity), lower (slower than the roof).
    assert sorted(point["tag"] for point in first["measured"]) == ["circle", "rect"]
    for point in first["measured"]:
        modelled = first["model"]["model-standard" if point["tag"] == "circle" else "model-flash"]
        assert point["at"][0] == pytest.approx(modelled[0]) and point["at"][1] > modelled[1]
        assert point["title"].startswith(f"measured on {H100_NAME}")
    assert "Hollow markers: measured on NVIDIA H100 80GB HBM3" in first["note"]
    assert [point["tag"] for point in both["measured"]] == ["rect"]  # only the kernel ran forward + backward
    assert a100["measured"] == [] and "nothing at this GPU, n, d and pass" in a100["note"]

    # No results at all: nothing measured is drawn, and the page says the kernel has not been timed.
    (empty,) = draw([state_of(RooflineView(**SMALL))], tmp_path)
    assert empty["measured"] == [] and "has not been timed on a GPU" in empty["note"]
