"""The torch backend's batch-invariant CPU kernels (`hf_model`): a row's result depends on that
row alone, whatever the rows beside it, the masked columns after it and the thread count, and
stays close to plain float32. Random weights, no model file, so they run in seconds; the
last test runs them again with MKL and ATen held to AVX2 kernels (the kernels an AMD Zen 3
CPU gets), so the claim is checked on two kernel families on any x86-64 machine."""

import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
hf_model = pytest.importorskip("ttcl.backends.hf_model")

WIDTHS = [(576, 1536), (1536, 576), (896, 4864), (577, 1000)]  # SmolLM2's, Qwen2.5's, and odd ones


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def fixed_linear(width: int, out: int, bias: bool = False):
    torch.manual_seed(width + out)
    layer = torch.nn.Linear(width, out, bias=bias)
    holder = torch.nn.Sequential(layer)
    hf_model._exact_cpu_kernels(holder, torch)
    return layer


@pytest.mark.parametrize("width,out", WIDTHS)
def test_a_linear_row_is_the_same_alone_in_any_batch_and_at_any_thread_count(width, out):
    layer = fixed_linear(width, out, bias=True)
    x = torch.randn(40, width) * torch.logspace(-3, 2, 40)[:, None]  # rows of very different scales
    with torch.no_grad():
        whole = layer(x)
        for n in (1, 2, 3, 5, 15, 16, 17, 33):
            assert torch.equal(layer(x[:n]), whole[:n]), n
        for i in (0, 7, 39):
            assert torch.equal(layer(x[i : i + 1]), whole[i : i + 1])
            assert torch.equal(layer(x[i : i + 1].expand(3, width).contiguous())[2], whole[i])
        assert torch.equal(layer(x.view(4, 10, width)), whole.view(4, 10, out))  # any leading shape
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(layer(x[5:21]), whole[5:21])


def test_a_fixed_point_linear_layer_stays_close_to_float64():
    layer = fixed_linear(576, 1536)
    x = torch.randn(8, 576)
    with torch.no_grad():
        exact = x.double() @ layer.weight.double().t()
        assert torch.allclose(layer(x).double(), exact, rtol=0, atol=2e-5 * exact.abs().max().item())


def attention_inputs(heads=6, kv_heads=2, keys=40, dim=64, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(1, heads, keys, dim)
    k = torch.randn(1, kv_heads, keys, dim) * 2
    v = torch.randn(1, kv_heads, keys, dim) * torch.logspace(-2, 1, keys)[None, None, :, None]
    causal = torch.full((keys, keys), torch.finfo(torch.float32).min).triu(1)[None, None]
    return q, k, v, causal


def attend(q, k, v, mask):
    out, _ = hf_model._exact_attention(None, q, k, v, mask, scaling=1 / math.sqrt(q.shape[-1]))
    return out


def test_a_query_gets_the_same_attention_in_a_prefill_a_decode_step_and_beside_masked_columns():
    q, k, v, causal = attention_inputs()
    prefill = attend(q, k, v, causal)  # (1, keys, heads, dim)
    for p in (0, 1, 2, 15, 16, 17, 39):
        step = attend(q[:, :, p : p + 1], k[:, :, : p + 1], v[:, :, : p + 1], None)  # a decode step
        assert torch.equal(step[0, 0], prefill[0, p]), p
        chunk = attend(q[:, :, p:], k, v, causal[:, :, p:])  # a later chunk of a chunked prefill
        assert torch.equal(chunk[0, 0], prefill[0, p]), p


def test_a_query_row_is_the_same_in_any_batch_of_rows_with_left_padding():
    q, k, v, causal = attention_inputs(keys=24)
    alone = attend(q[:, :, -1:], k, v, None)
    pad = 7  # a batch row whose sequence is shorter is left-padded: its pad columns are masked
    kp = torch.nn.functional.pad(k, (0, 0, pad, 0), value=3.0)
    vp = torch.nn.functional.pad(v, (0, 0, pad, 0), value=-5.0)
    mask = torch.zeros(1, 1, 1, 24 + pad)
    mask[..., :pad] = torch.finfo(torch.float32).min
    padded = attend(q[:, :, -1:], kp, vp, mask)
    assert torch.equal(padded, alone)
    batch = attend(torch.cat([q[:, :, -1:]] * 3), torch.cat([k] * 3), torch.cat([v] * 3), None)
    assert all(torch.equal(batch[i], alone[0]) for i in range(3))


def test_exact_attention_stays_close_to_sdpa():
    q, k, v, causal = attention_inputs()
    ours = attend(q, k, v, causal)
    groups = q.shape[1] // k.shape[1]
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.double(),
        k.repeat_interleave(groups, 1).double(),
        v.repeat_interleave(groups, 1).double(),
        attn_mask=causal.double(),
    ).transpose(1, 2)
    assert torch.allclose(ours.double(), ref, rtol=0, atol=1e-5 * v.abs().max().item())


def test_silu_from_exp_gives_an_element_the_same_value_wherever_it_sits():
    torch.manual_seed(1)
    x = torch.randn(4096) * 6
    whole = hf_model._silu(x)
    for n in (1, 3, 17, 33):  # each element once in a tensor's scalar tail
        parts = torch.cat([hf_model._silu(x[s : s + n].clone()) for s in range(0, 4096, n)])
        assert torch.equal(parts, whole)
    assert torch.allclose(whole, torch.nn.functional.silu(x), rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(os.environ.get("MKL_ENABLE_INSTRUCTIONS") == "AVX2", reason="already the AVX2 run")
def test_the_kernels_are_invariant_on_avx2_kernels_too():
    env = dict(os.environ, MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "9 passed" in run.stdout
