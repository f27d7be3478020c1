"""Parity of the CLIP port with Hugging Face `transformers` (PyTorch f32) on tiny random models,
loaded through the converter from safetensors and from a .bin state dict; converter errors."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from unclip_jax.convert import hf_clip  # noqa: E402
from unclip_jax.models.clip import CLIP  # noqa: E402

TOL = 1e-4


def _tower(width: int, mlp: int, layers: int, heads: int, act: str, **fields) -> dict:
    """A Hugging Face CLIP text or vision config."""
    return dict(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_act=act,
        **fields,
    )


def _text(vocab: int, length: int, eos: int, *tower, **special_ids) -> dict:
    fields = dict(vocab_size=vocab, max_position_embeddings=length, eos_token_id=eos)
    return _tower(*tower, **fields, **special_ids)


# Three tiny configs: activations, legacy/current pooling, image/patch sizes, widths, heads,
# projection dims and context lengths all differ. Towers: width, MLP width, layers, heads, act.
CONFIGS = {
    "quick_gelu-legacy_eos": dict(
        text=_text(99, 20, 2, 32, 37, 2, 4, "quick_gelu"),
        vision=_tower(48, 64, 2, 4, "quick_gelu", image_size=30, patch_size=6),
        projection_dim=24,
    ),
    "gelu-eos": dict(
        text=_text(120, 16, 7, 48, 96, 3, 6, "gelu", pad_token_id=7, bos_token_id=1),
        vision=_tower(40, 80, 1, 5, "gelu", image_size=32, patch_size=8),
        projection_dim=16,
    ),
    "quick_gelu-eos-wide_heads": dict(
        text=_text(64, 12, 63, 24, 40, 1, 2, "quick_gelu", pad_token_id=0, bos_token_id=62),
        vision=_tower(64, 32, 2, 8, "quick_gelu", image_size=28, patch_size=14),
        projection_dim=32,
    ),
}


def test_omitted_fields_take_hugging_face_defaults():
    """`save_pretrained` omits fields at their defaults: ours must equal Hugging Face's."""
    full = transformers.CLIPConfig().to_dict()
    assert hf_clip.config_from_hf({"model_type": "clip"}) == hf_clip.config_from_hf(full)


def _inputs(spec: dict, rng: np.random.RandomState):
    text, vision = spec["text"], spec["vision"]
    length, vocab, eos = text["max_position_embeddings"], text["vocab_size"], text["eos_token_id"]
    legacy = eos == 2
    end_token = vocab - 1 if legacy else eos  # legacy: the end token is the largest id
    ids = rng.randint(3, vocab - 1, size=(3, length))
    ids[ids == eos] = 3
    ends = [length // 2, length - 1, 3]
    for row, end in enumerate(ends):
        ids[row, end] = end_token
        ids[row, end + 1 :] = end_token if row == 2 else text.get("pad_token_id", 1)
    mask = (np.arange(length)[None] <= np.asarray(ends)[:, None]).astype(np.int64)
    size = vision["image_size"]
    pixels = rng.randn(2, 3, size, size).astype(np.float32)  # NCHW, as torch takes them
    return ids, mask, pixels


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    spec = CONFIGS[request.param]
    torch.manual_seed(0)
    hf_config = transformers.CLIPConfig(
        text_config=spec["text"],
        vision_config=spec["vision"],
        projection_dim=spec["projection_dim"],
    )
    model = transformers.CLIPModel(hf_config).eval()
    with torch.no_grad():  # non-default logit scale so the logits test it
        model.logit_scale.fill_(3.1)
    safetensors_dir = tmp_path_factory.mktemp("safetensors")
    model.save_pretrained(safetensors_dir)
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "config.json").write_text((safetensors_dir / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    ids, mask, pixels = _inputs(spec, np.random.RandomState(0))
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            pixel_values=torch.tensor(pixels),
            attention_mask=torch.tensor(mask),
        )
    reference = {
        "logits": out.logits_per_image.numpy(),
        "text_embeds": out.text_model_output.pooler_output.numpy(),  # projected, not normalised
        "image_embeds": out.vision_model_output.pooler_output.numpy(),
        "text_hidden_states": out.text_model_output.last_hidden_state.numpy(),
        "image_hidden_states": out.vision_model_output.last_hidden_state.numpy(),
    }
    return dict(
        name=request.param,
        spec=spec,
        safetensors_dir=safetensors_dir,
        bin_dir=bin_dir,
        ids=ids,
        mask=mask,
        pixels=pixels,
        reference=reference,
    )


def _run(config, params, case):
    apply = jax.jit(CLIP(config).apply)
    logits, aux = apply(
        params,
        jnp.asarray(case["ids"]),
        jnp.asarray(case["pixels"].transpose(0, 2, 3, 1)),
        jnp.asarray(case["mask"]),
    )
    return {"logits": logits, **{k: aux[k] for k in case["reference"] if k != "logits"}}


@pytest.mark.parametrize("source", ["safetensors_dir", "bin_dir"])
def test_parity_with_transformers(case, source):
    config, params = hf_clip.load_hf_clip(case[source])
    assert config.text.pooling == ("argmax" if case["spec"]["text"]["eos_token_id"] == 2 else "eos")
    ours = _run(config, params, case)
    for key, expected in case["reference"].items():
        error = float(np.max(np.abs(np.asarray(ours[key]) - expected)))
        assert ours[key].shape == expected.shape, key
        assert error <= TOL, f"{case['name']} {source} {key}: max abs error {error:.2e}"


def test_orbax_round_trip_through_convert_directory(case, tmp_path):
    hf_clip.convert_directory(case["safetensors_dir"], tmp_path / "ckpt")
    config, params = hf_clip.load_clip(tmp_path / "ckpt")
    expected_config, expected = hf_clip.load_hf_clip(case["safetensors_dir"])
    assert config == expected_config
    flat = jax.tree_util.tree_leaves_with_path(params)
    assert len(flat) == len(jax.tree.leaves(expected))
    for path, leaf in flat:
        reference = expected
        for key in path:
            reference = reference[key.key]
        np.testing.assert_array_equal(np.asarray(leaf), reference)


@pytest.mark.parametrize("case", ["gelu-eos"], indirect=True)
def test_checkpoint_that_does_not_fit_its_config(case, tmp_path):
    hf_clip.convert_directory(case["safetensors_dir"], tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / hf_clip.CONFIG_FILE
    config = json.loads(config_file.read_text())
    config["vision"]["mlp_dim"] = 81
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"vision/block_0/fc1/bias.*\(81,\).*\(80,\)"):
        hf_clip.load_clip(tmp_path / "ckpt")


def test_missing_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf_clip.load_hf_clip(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        hf_clip.load_hf_clip(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf_clip.load_clip(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is empty"):
        hf_clip.load_clip(tmp_path / "empty")


def test_corrupt_safetensors_and_missing_weights(tmp_path):
    spec = CONFIGS["gelu-eos"]
    config = {
        "model_type": "clip",
        "text_config": spec["text"],
        "vision_config": spec["vision"],
        "projection_dim": spec["projection_dim"],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no weights"):
        hf_clip.load_hf_clip(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        hf_clip.load_hf_clip(tmp_path)


@pytest.mark.parametrize("case", ["gelu-eos"], indirect=True)
def test_mismatched_and_missing_tensors_name_path_and_shapes(case, tmp_path):
    state = {k: v.clone() for k, v in torch.load(case["bin_dir"] / "pytorch_model.bin").items()}
    (tmp_path / "config.json").write_text((case["bin_dir"] / "config.json").read_text())
    state["text_model.encoder.layers.1.mlp.fc1.weight"] = torch.zeros(95, 48)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"text/block_1/fc1/kernel.*\(95, 48\).*\(48, 96\)"):
        hf_clip.load_hf_clip(tmp_path)
    del state["text_model.encoder.layers.1.mlp.fc1.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"text/block_1/fc1/kernel.*missing.*\(48, 96\)"):
        hf_clip.load_hf_clip(tmp_path)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unclip_jax.cli",
            "convert-clip",
            f"--hf-dir={tmp_path / 'nowhere'}",
            f"--out={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pathlib.Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
