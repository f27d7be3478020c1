"""Autoregressive sampling speed of DALL·E's transformer: ours (`sampling.dalle`, one compiled
program with the key/value cache) against Hugging Face `transformers` GPT-2 `generate` (its KV
cache), at the same width, depth, heads and lengths, with the dense causal mask on both.

Each call encodes a caption of `text_length` tokens and samples `grid²` image codes at
temperature 1 without truncation (GPT-2: `top_k=0`, `top_p=1`, no stop token). GPT-2's
vocabulary is the image vocabulary, so that both compute the same logits per sampled token (ours
reads the caption through its own text table). Weights are random: speed does not depend on them.
Ours runs in chunks of `sampling.dalle.CHUNK` codes (each step reading the cache written before
its chunk and the chunk) and, beside it, in one chunk (each step reading all S positions). All
run in one process, alternately, so that they share the machine's load; the first call of each
(compilation, allocator warm-up) is excluded; PyTorch gets the faster of 1 and all cores.
Prints image tokens/s and the ratio, and writes
`experiments/results/bench_dalle/dalle_sampling<tag>.json`.

    .venv/bin/python -m experiments.bench_dalle --sizes dalle_shapes,12x768 --batch 16 --reps 3
"""

import dataclasses
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common as common
from unclip_jax.models.dalle import DalleConfig, DalleTransformer, sized_config
from unclip_jax.models.dvae import DVAEConfig
from unclip_jax.sampling.dalle import CHUNK, make_dalle_sampler


def dalle_shapes_size() -> DalleConfig:
    """The demo's transformer (`configs/dalle_shapes.py` over `configs/dvae_shapes.py`'s codes)."""
    from configs import dalle_shapes, dvae_shapes

    config, dvae = dalle_shapes.get_config(), dvae_shapes.get_config()
    dvae_fields = {k: v for k, v in dvae.model.items() if k != "dtype"}
    return sized_config(
        {k: v for k, v in config.model.items() if k != "dtype"},
        config.tokenizer.vocab_size,
        config.tokenizer.context_length,
        DVAEConfig(**dvae_fields),
        config.data.image_size,
    )


SIZES = {
    "dalle_shapes": dalle_shapes_size,
    # GPT-2 small's widths over a 64-token caption and 16×16 codes of 8192.
    "12x768": lambda: DalleConfig(
        text_vocab_size=16384,
        text_length=64,
        image_vocab_size=8192,
        grid=16,
        width=768,
        depth=12,
        num_heads=12,
        head_dim=64,
    ),
}


def dense(config: DalleConfig) -> DalleConfig:
    return dataclasses.replace(config, pattern="dense")


def random_params(model: DalleTransformer, seed: int = 0):
    """N(0, 0.02²) parameters of the model's shapes (from eval_shape: nothing compiled)."""
    tokens = jnp.zeros((1, model.config.text_length), jnp.int32)
    codes = jnp.zeros((1, model.config.num_codes), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens > 0, codes))
    leaves, tree = jax.tree.flatten(shapes["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        tree, [rng.normal(0.0, 0.02, leaf.shape).astype(np.float32) for leaf in leaves]
    )


def gpt2(config: DalleConfig):
    """GPT-2 of the same width, depth, heads and (tanh) GELU over the image vocabulary."""
    import torch
    import transformers

    torch.manual_seed(0)
    gpt_config = transformers.GPT2Config(
        vocab_size=config.image_vocab_size,
        n_positions=config.length + 1,
        n_embd=config.width,
        n_layer=config.depth,
        n_head=config.num_heads,
        n_inner=config.mlp_ratio * config.width,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(gpt_config).eval()


def bench(name: str, batch: int, reps: int) -> dict:
    import torch

    config = dense(SIZES[name]())
    model = DalleTransformer(config)
    params = jax.device_put(random_params(model))
    sampler = make_dalle_sampler(model)  # codes in chunks (sampling.dalle.CHUNK)
    one_chunk = make_dalle_sampler(model, chunk=config.num_codes)  # every step reads all S
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.integers(0, config.text_vocab_size, (batch, config.text_length)))
    text_mask = jnp.ones_like(text, bool)

    def ours(seed: int = 0, sample=sampler):
        return jax.block_until_ready(sample(params, text, text_mask, jax.random.key(seed)))

    theirs_model = gpt2(config)
    prompt = torch.from_numpy(rng.integers(0, config.image_vocab_size, (batch, config.text_length)))
    generation = dict(
        do_sample=True,
        max_new_tokens=config.num_codes,
        min_new_tokens=config.num_codes,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        use_cache=True,
        pad_token_id=0,
        eos_token_id=None,
    )

    def theirs():
        with torch.no_grad():
            out = theirs_model.generate(
                prompt, attention_mask=torch.ones_like(prompt), **generation
            )
        assert out.shape == (batch, config.text_length + config.num_codes), out.shape
        return out

    assert ours().shape == (batch, config.num_codes)
    np.testing.assert_array_equal(ours(sample=one_chunk), ours())  # chunks draw the same codes
    threads = common.pick_torch_threads(theirs, repeats=1)
    times = {"ours": [], "ours_one_chunk": [], "transformers": []}
    for rep in range(reps):
        times["ours"].append(common.seconds(ours, rep + 1))
        times["ours_one_chunk"].append(common.seconds(lambda r=rep: ours(r + 1, one_chunk)))
        times["transformers"].append(common.seconds(theirs))
    tokens = batch * config.num_codes
    ours_tps = tokens / statistics.median(times["ours"])
    one_chunk_tps = tokens / statistics.median(times["ours_one_chunk"])
    theirs_tps = tokens / statistics.median(times["transformers"])
    row = dict(
        size=name,
        batch=batch,
        width=config.width,
        depth=config.depth,
        heads=config.num_heads,
        head_dim=config.head_dim,
        text_length=config.text_length,
        image_tokens=config.num_codes,
        image_vocab=config.image_vocab_size,
        params_ours=common.num_params(params),
        params_transformers=sum(p.numel() for p in theirs_model.parameters()),
        ours_tokens_per_s=ours_tps,
        ours_one_chunk_tokens_per_s=one_chunk_tps,
        chunk=CHUNK,
        transformers_tokens_per_s=theirs_tps,
        ratio=ours_tps / theirs_tps,
        seconds=times,
        torch_threads=threads,
        load_average=common.load_average(),
    )
    print(
        f"{name:13s} batch {batch:3d}  ours {ours_tps:9.1f} tok/s (one chunk {one_chunk_tps:9.1f})"
        f"  transformers {theirs_tps:9.1f} tok/s  ratio {row['ratio']:.2f}  (torch threads "
        f"{threads}, load {row['load_average']})",
        flush=True,
    )
    return row


def main() -> None:
    parser = common.argument_parser(__doc__, sizes="dalle_shapes,12x768", batch=16, reps=3, tag="")
    args = parser.parse_args()
    sizes = common.split_names(parser, "--sizes", args.sizes, SIZES)
    import transformers

    rows = [bench(name, args.batch, args.reps) for name in sizes]
    machine = {**common.machine(), "transformers": transformers.__version__}
    path = common.write_results(
        "bench_dalle", f"dalle_sampling{args.tag}", dict(machine=machine, rows=rows)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
