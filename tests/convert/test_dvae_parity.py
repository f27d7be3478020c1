"""Parity of the dVAE port with OpenAI's `dall_e` package (PyTorch f32) on small random models,
converted from a `state_dict` file and from a whole-module pickle; the paper size's parameter
count; converter errors (pickles refused without allow_pickle, corrupt files, bad tensors)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
dall_e = pytest.importorskip("dall_e")

from unclip_jax.convert import dvae as convert  # noqa: E402
from unclip_jax.models.dvae import (  # noqa: E402
    DVAEConfig,
    DVAEDecoder,
    DVAEEncoder,
    count_params,
)

TOL = 1e-4
SMALL = DVAEConfig(n_hid=64, vocab_size=512, n_init=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(torch encoder, torch decoder, {format: (encoder file, decoder file)})."""
    torch.manual_seed(0)
    encoder = dall_e.Encoder(n_hid=64, vocab_size=512, requires_grad=False)
    decoder = dall_e.Decoder(n_init=32, n_hid=64, vocab_size=512)
    root = tmp_path_factory.mktemp("dall_e")
    torch.save(encoder.state_dict(), root / "encoder.pt")
    torch.save(decoder.state_dict(), root / "decoder.pt")
    torch.save(encoder, root / "encoder.pkl")
    torch.save(decoder, root / "decoder.pkl")
    files = {
        "state_dict": (root / "encoder.pt", root / "decoder.pt"),
        "pickle": (root / "encoder.pkl", root / "decoder.pkl"),
    }
    return encoder.eval(), decoder.eval(), files


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("fmt", ["state_dict", "pickle"])
def test_encoder_and_decoder_equal_pytorch(reference, fmt):
    encoder, decoder, files = reference
    config, variables = convert.load_openai_dvae(*files[fmt], allow_pickle=fmt == "pickle")
    assert config == SMALL
    rng = np.random.RandomState(0)
    for size in (32, 64):
        images = rng.rand(2, 3, size, size).astype(np.float32)  # NCHW in [0, 1]
        with torch.no_grad():
            expected = _nhwc(encoder(dall_e.map_pixels(torch.from_numpy(images))))
        logits = DVAEEncoder(config).apply(variables["encoder"], images.transpose(0, 2, 3, 1))
        assert logits.shape == expected.shape == (2, size // 8, size // 8, 512)
        np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0)

    codes = rng.randint(0, 512, size=(3, 8, 8))
    one_hot = np.eye(512, dtype=np.float32)[codes]  # [B, h, w, vocab]
    relaxed = torch.softmax(torch.from_numpy(rng.randn(3, 8, 8, 512).astype(np.float32)), -1)
    for ours, theirs in ((codes, one_hot), (one_hot, one_hot), (relaxed.numpy(), relaxed)):
        with torch.no_grad():
            expected = _nhwc(decoder(torch.as_tensor(theirs).permute(0, 3, 1, 2).contiguous()))
        stats = DVAEDecoder(config).apply(variables["decoder"], jnp.asarray(ours))
        assert stats.shape == expected.shape == (3, 64, 64, 6)
        np.testing.assert_allclose(stats, expected, atol=TOL, rtol=0)
        assert np.abs(stats - expected).max() < TOL * np.abs(expected).max()

    with torch.no_grad():
        stats = decoder(torch.from_numpy(one_hot).permute(0, 3, 1, 2).contiguous())
        expected = _nhwc(dall_e.unmap_pixels(torch.sigmoid(stats[:, :3])))
    images = DVAEDecoder(config).apply(variables["decoder"], codes, method=DVAEDecoder.decode)
    np.testing.assert_allclose(images, expected, atol=TOL, rtol=0)


def test_paper_size_parameter_count_equals_dall_e():
    meta = torch.device("meta")
    encoder, decoder = dall_e.Encoder(device=meta), dall_e.Decoder(device=meta)
    theirs = {
        "encoder": sum(p.numel() for p in encoder.parameters()),
        "decoder": sum(p.numel() for p in decoder.parameters()),
    }
    assert count_params(DVAEConfig()) == theirs == {"encoder": 53_786_240, "decoder": 43_829_766}
    shapes = [
        {k: np.broadcast_to(np.float32(0), v.shape) for k, v in m.state_dict().items()}
        for m in (encoder, decoder)
    ]
    assert convert.config_from_state_dicts(*shapes) == DVAEConfig()


def _one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_pickle_is_refused_without_allow_pickle(reference):
    _, _, files = reference
    message = _one_line_error(
        r"encoder\.pkl is a whole-module pickle \(dall_e\.encoder\.Encoder.*"
        r"runs code.*allow_pickle",
        convert.load_openai_dvae,
        *files["pickle"],
    )
    assert "dall_e.encoder.EncoderBlock" in message


def test_corrupt_and_truncated_files_are_named(reference, tmp_path):
    _, _, files = reference
    encoder_file = files["state_dict"][0]
    for name, data in (
        ("truncated.pt", encoder_file.read_bytes()[:5000]),
        ("garbage.pt", b"not a torch file at all" * 10),
    ):
        (tmp_path / name).write_bytes(data)
        _one_line_error(
            rf"{name} is not a readable PyTorch state dict \(corrupt or truncated\?\)",
            convert.read_state_dict,
            tmp_path / name,
        )
        _one_line_error(
            rf"{name} is not a readable PyTorch file \(corrupt or truncated\?\)",
            convert.read_state_dict,
            tmp_path / name,
            allow_pickle=True,
        )
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    _one_line_error(
        r"list\.pt holds a list, not a state dict", convert.read_state_dict, tmp_path / "list.pt"
    )
    with pytest.raises(FileNotFoundError, match="no dVAE weight file"):
        convert.read_state_dict(tmp_path / "nowhere.pt")


def test_bad_tensors_are_named_with_their_shapes(reference):
    encoder, decoder, _ = reference
    enc = {k: v.numpy() for k, v in encoder.state_dict().items()}
    dec = {k: v.numpy() for k, v in decoder.state_dict().items()}
    bad = dict(enc, **{"blocks.group_2.block_2.res_path.conv_2.w": np.zeros((32, 31, 3, 3))})
    _one_line_error(
        r"encoder: parameter group_2_block_2/conv_2/kernel: tensor "
        r"'blocks\.group_2\.block_2\.res_path\.conv_2\.w' has shape \(32, 31, 3, 3\).*"
        r"\(3, 3, 32, 32\)",
        convert.params_from_state_dict,
        SMALL,
        "encoder",
        bad,
    )
    missing = {k: v for k, v in dec.items() if k != "blocks.group_3.block_1.id_path.b"}
    _one_line_error(
        r"decoder: parameter group_3_block_1/id_path/bias: tensor .* is missing.*\(128,\)",
        convert.params_from_state_dict,
        SMALL,
        "decoder",
        missing,
    )
    extra = dict(dec, **{"blocks.extra.w": np.zeros(1)})
    _one_line_error(
        r"tensors the dVAE does not use: \['blocks\.extra\.w'\]",
        convert.params_from_state_dict,
        SMALL,
        "decoder",
        extra,
    )
    other = dall_e.Decoder(n_init=32, n_hid=64, vocab_size=1024).state_dict()
    _one_line_error(
        r"encoder and decoder disagree on vocab_size: 512 vs 1024",
        convert.config_from_state_dicts,
        enc,
        {k: v.numpy() for k, v in other.items()},
    )
    _one_line_error(
        r"decoder: no tensors named blocks\.group_G\.block_I",
        convert.config_from_state_dicts,
        enc,
        {"w": np.zeros((1, 1, 1, 1))},
    )


def test_saved_checkpoint_round_trips_and_is_checked(reference, tmp_path):
    _, _, files = reference
    config = convert.convert_files(*files["state_dict"], tmp_path / "ckpt")
    loaded_config, loaded = convert.load_dvae(tmp_path / "ckpt")
    _, expected = convert.load_openai_dvae(*files["state_dict"])
    assert loaded_config == config == SMALL
    for half in convert.HALVES:
        for path, value in convert.param_shapes(config, half).items():
            mine, theirs = loaded[half]["params"], expected[half]["params"]
            for key in path.split("/"):
                mine, theirs = mine[key], theirs[key]
            assert mine.shape == value
            np.testing.assert_array_equal(mine, theirs)
    convert.convert_files(*files["state_dict"], tmp_path / "ckpt")  # replaces its own kind
    config_file = tmp_path / "ckpt" / convert.CONFIG_FILE
    config_file.write_text(json.dumps(dict(SMALL.to_dict(), n_init=16)))
    _one_line_error(
        r"decoder parameter group_1_block_1/conv_1/kernel: .* expects shape \(1, 1, 16, 128\)"
        r".* holds \(1, 1, 32, 128\)",
        convert.load_dvae,
        tmp_path / "ckpt",
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    _one_line_error(
        r"other exists and is not a dVAE checkpoint; not overwriting it",
        convert.convert_files,
        *files["state_dict"],
        tmp_path / "other",
    )
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
