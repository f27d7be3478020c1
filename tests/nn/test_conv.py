"""`conv_same`: oneDNN's convolution and its VJP against XLA's on the same inputs (1×1, 3×3, 7×7),
partitioned over a batch-sharded mesh, inside shard_map and vmap; XLA's in programs for TPUs and
GPUs and where oneDNN does not apply; the cost model counting its FLOPs as XLA's convolution's;
the build's refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from unclip_jax import hlo_cost
from unclip_jax.nn import conv as conv_lib
from unclip_jax.nn.linear import conv
from unclip_jax.nn.native import build
from unclip_jax.sharding import make_mesh

needs_onednn = pytest.mark.skipif(
    not conv_lib.onednn_available(), reason="oneDNN convolutions not built (make venv)"
)


def _inputs(n=4, size=9, ci=5, co=6, k=3, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, size, size, ci), dtype)
    kernel = (jax.random.normal(keys[1], (k, k, ci, co)) / (k * np.sqrt(ci))).astype(dtype)
    cotangent = jax.random.normal(keys[2], (n, size, size, co), dtype)
    return x, kernel, cotangent


def _value_and_grads(fn, x, kernel, cotangent):
    out, vjp = jax.vjp(fn, x, kernel)
    return (out, *vjp(cotangent))


def _assert_close(got, want, rtol=2e-5):
    for g, w in zip(got, want, strict=True):
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=rtol * scale, rtol=0)


def _compiled_text(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


@needs_onednn
@pytest.mark.parametrize(
    "shape", [dict(k=1), dict(k=3), dict(k=7, size=6), dict(n=1, size=16, ci=3, co=32)]
)
def test_onednn_value_and_gradients_equal_xla(shape):
    x, kernel, cotangent = _inputs(**shape)
    got = jax.jit(lambda *a: _value_and_grads(conv_lib.conv_same, *a))(x, kernel, cotangent)
    want = _value_and_grads(conv_lib.xla_conv_same, x, kernel, cotangent)
    _assert_close(got, want)
    text = _compiled_text(conv_lib.conv_same, x, kernel)
    assert 'custom_call_target="unclip_conv_forward"' in text
    assert " convolution(" not in text


@needs_onednn
def test_batch_sharded_program_runs_each_device_on_its_rows():
    mesh = make_mesh({"data": 2}, jax.devices()[:2])  # data=2, fsdp=1, tensor=1
    x, kernel, cotangent = _inputs(n=4)
    rows = NamedSharding(mesh, P("data"))
    args = (jax.device_put(x, rows), kernel, jax.device_put(cotangent, rows))
    step = jax.jit(lambda *a: _value_and_grads(conv_lib.conv_same, *a))
    _assert_close(step(*args), _value_and_grads(conv_lib.xla_conv_same, x, kernel, cotangent))
    text = step.lower(*args).compile().as_text()
    assert "all-gather" not in text  # no device computes another's rows
    assert "f32[2,9,9,6]{3,2,1,0} custom-call(" in text  # forward on 2 of the 4 rows
    assert text.count("all-reduce(") == 1  # the kernel gradient summed over the devices


@needs_onednn
def test_inside_shard_map_and_vmap():
    mesh = make_mesh({"data": 2}, jax.devices()[:2])  # data=2, fsdp=1, tensor=1
    x, kernel, _ = _inputs(n=4)
    per_device = jax.shard_map(
        lambda x: conv_lib.conv_same(x, kernel), mesh=mesh, in_specs=P("data"), out_specs=P("data")
    )
    want = conv_lib.xla_conv_same(x, kernel)
    _assert_close([jax.jit(per_device)(x)], [want])
    stacked = jax.vmap(lambda x: conv_lib.conv_same(x, kernel))(x.reshape(2, 2, *x.shape[1:]))
    _assert_close([stacked.reshape(want.shape)], [want])


@needs_onednn
def test_tpu_and_gpu_programs_hold_xla_convolutions():
    x, kernel, cotangent = _inputs()
    step = jax.jit(lambda *a: _value_and_grads(conv_lib.conv_same, *a))
    ffi_targets = [jax.export.DisabledSafetyCheck.custom_call(t) for t in conv_lib._TARGETS]
    for platform, native in (("tpu", False), ("cuda", False), ("cpu", True)):
        exported = jax.export.export(step, platforms=[platform], disabled_checks=ffi_targets)
        text = exported(x, kernel, cotangent).mlir_module()
        assert ("unclip_conv_forward" in text) == native, platform
        assert ("stablehlo.convolution" in text) != native, platform


def test_xla_where_onednn_does_not_apply(monkeypatch):
    x, kernel, _ = _inputs(dtype=jnp.bfloat16)
    assert " convolution(" in _compiled_text(conv_lib.conv_same, x, kernel)  # bfloat16
    monkeypatch.setattr(conv_lib, "onednn_available", lambda: False)
    x, kernel, _ = _inputs()
    fresh_trace = lambda x, kernel: conv_lib.conv_same(x, kernel)
    assert "custom-call" not in _compiled_text(fresh_trace, x, kernel)


def test_even_kernel_refused_by_name():
    with pytest.raises(ValueError, match=r"convolution 'conv_in': kernel size 4; expected an odd"):
        conv(8, 4, name="conv_in")


@needs_onednn
def test_cost_model_counts_onednn_as_xla_convolutions():
    x, kernel, cotangent = _inputs(n=2, size=8, ci=4, co=8, k=3)

    def step(conv_fn):
        return lambda *a: _value_and_grads(conv_fn, *a)

    onednn = hlo_cost.program_flops(_compiled_text(step(conv_lib.conv_same), x, kernel, cotangent))
    xla = hlo_cost.program_flops(_compiled_text(step(conv_lib.xla_conv_same), x, kernel, cotangent))
    # 3 convolutions of 2·N·Ci·Co·(taps on real input) each: 8 px same-padded → 22² taps
    assert onednn == pytest.approx(3 * 2 * 2 * 4 * 8 * 22**2, rel=0.05)
    assert onednn == pytest.approx(xla, rel=0.01)


def test_build_without_compiler_or_onednn_says_so(monkeypatch, capsys):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert build.main() == 0
    assert "C++ compiler (c++ or $CXX) not found" in capsys.readouterr().out
    monkeypatch.setattr(build.shutil, "which", lambda name: "/usr/bin/c++")
    monkeypatch.setattr(build, "onednn_prefix", lambda: None)
    assert build.main() == 0
    out = capsys.readouterr().out
    assert "oneDNN (the cpu extra) not found; XLA's convolutions are used" in out
