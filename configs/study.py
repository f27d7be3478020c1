"""The papers' comparisons on the shapes, where the truth is known (`unclip study`): unCLIP with
its diffusion prior (A) and its autoregressive prior (B), its decoder given the caption alone (C1)
or the CLIP text embedding in place of the image embedding (C2, §5.1), and a GLIDE-like decoder
trained on captions alone (D), all on the same data, CLIP and held-out captions.

    unclip study --config configs/study.py:fast     # the default: one CLIP and seed, guidance 1, 4
    unclip study --config configs/study.py:full     # 2 CLIPs × 3 seeds, guidance {1, 2, 4, 8}
    unclip study --config configs/study.py:smoke    # every stage and arm for a step (tests)

Data: `shapes_captions/32px`, one or two shapes at 32 px, the decoders' resolution (no
upsampler): on 500 real two-object test images of it the oracle binds both objects' colours and
shapes at 99.6% (97.8% with the relation), where at 16 px it reads 49%
(`tests/evals/test_demo_metrics.py`).

Each arm's figures go to `<results>/<arm>.json` (skipped on a re-run once written: a later run
resumes the study), the claims' table to `table`. The claims and the rule that decides each
verdict are written here, before any full run (`unclip_jax/demo/study_claims.py` applies them).
"""

import ml_collections

from configs import (
    ar_prior_demo,
    base,
    clip_shapes,
    dalle_shapes,
    decoder_demo,
    demo,
    dvae_shapes,
    prior_demo,
)

SOURCE = "shapes_captions/32px"
IMAGE_SIZE = 32
TIERS = ("smoke", "fast", "full")
STAGES = ("clip", "score_clip", "prior", "ar_prior", "decoder", "glide_decoder", "dvae", "dalle")


def arms() -> dict:
    """The arms: what each is, the pipeline it samples ("unclip": the decoder reading z_i and the
    caption; "glide": the decoder trained on captions alone), its prior ("diffusion", "ar", or
    "" where none runs), where the decoder's z_i comes from ("prior"; "text": the CLIP text
    embedding z_t at the held-out images' mean ‖z_i‖; "null": the decoder's learned null),
    whether it is trained again per seed (else once per CLIP) and whether it is sampled at every
    guidance scale (else at `reference_guidance`). "dalle": DALL·E's pipeline, at each N of
    `rerank_curve` (no guidance)."""

    def arm(description, pipeline, prior, embedding, seeded=False, guided=False):
        return dict(
            description=description,
            pipeline=pipeline,
            prior=prior,
            embedding=embedding,
            seeded=seeded,
            guided=guided,
        )

    return {
        "A": arm("unCLIP, diffusion prior", "unclip", "diffusion", "prior", True, True),
        "B": arm("unCLIP, autoregressive prior", "unclip", "ar", "prior", True),
        "C1": arm("decoder given the caption only", "unclip", "", "null"),
        "C2": arm("decoder given the CLIP text embedding as z_i", "unclip", "", "text"),
        "D": arm(
            "GLIDE-like: the same U-Net trained on captions alone", "glide", "", "null", guided=True
        ),
        # DALL·E (2021): its codes drawn for the caption, the best of N by the conditioning CLIP
        # ("E#N" in a claim; "E" is N = 1)
        "E": arm("DALL·E (2021): dVAE and one transformer, CLIP reranking", "dalle", "", ""),
    }


def compare(figure, first, second, direction=1, margin=None, versus=None, matched=None):
    # versus (third, fourth): the difference first − second against third − fourth;
    # matched (figure): first at its lowest guidance scale whose mean of that figure is at
    # least second's (inconclusive where no scale reaches it)
    return dict(
        figure=figure,
        first=first,
        second=second,
        direction=direction,
        margin=margin,
        versus=versus,
        matched=matched,
    )


def claim(name, paper, *comparisons, compute=None):
    # compute: the claim holds only at comparable training FLOPs (ratio within 1 ± within),
    # else inconclusive
    return dict(name=name, paper=paper, comparisons=list(comparisons), compute=compute)


def claims() -> list[dict]:
    """The claims, each a list of comparisons of figures; the verdict rule
    (`study_claims.claim_verdict`): each comparison is the 95% bootstrap interval (seeds, then
    captions) of the difference first − second of the figure, judged against the paper's
    direction (+1: first larger), or, with `margin`, "first at least as good as second": the
    interval's low end above −margin. A claim is reproduced when every comparison is, not
    reproduced when any comparison is reversed (its interval on the wrong side of 0, or below
    −margin), inconclusive otherwise — and inconclusive where it names `compute` and the two
    arms' training FLOPs (every stage's train step counted, `unclip_jax/hlo_cost.py`) differ by
    more than the stated fraction."""

    return [
        claim(
            "guidance_trade_off",
            "Guidance trades diversity for fidelity, and unCLIP keeps more diversity than GLIDE "
            "at equal fidelity (§5.2, Fig. 7)",
            compare("colour_shape", "A@max", "A@min"),
            compare("diversity", "A@max", "A@min", direction=-1),
            compare("diversity", "A", "D@max", matched="colour_shape"),
        ),
        claim(
            "diffusion_prior_vs_ar",
            "The diffusion prior is at least as good as the AR prior, at lower compute (§5.1, "
            "Table 2)",
            compare("colour_shape", "A", "B", margin=0.02),
            compare("clip_score", "A", "B", margin=0.5),
        ),
        claim(
            "prior_matters",
            "The prior matters: prior > text embedding > caption only (§5.1, Fig. 9)",
            compare("colour_shape", "A", "C2"),
            compare("colour_shape", "C2", "C1"),
            compare("fd", "A", "C2", direction=-1),
            compare("fd", "C2", "C1", direction=-1),
        ),
        claim(
            "binding",
            "unCLIP binds attributes to objects worse than GLIDE (§7, Fig. 15)",
            compare("binding", "A", "D", direction=-1),
        ),
        claim(
            "unclip_vs_dalle",
            "unCLIP beats DALL·E (2021) on FD and accuracy at comparable training compute "
            "(§5.3, Table 2)",
            compare("colour_shape", "A", "E#16"),
            compare("fd", "A", "E#16", direction=-1),
            compute=dict(first="A", second="E", within=0.25),
        ),
        claim(
            "reranking_flattens",
            "DALL·E's gains from CLIP reranking flatten as N grows (Ramesh et al. 2021, §3, "
            "Fig. 6)",
            compare("colour_shape", "E#8", "E#1"),
            compare("colour_shape", "E#32", "E#8", direction=-1, versus=("E#8", "E#1")),
        ),
        claim(
            "variations",
            "Variations keep the semantics while the layout varies (§3.1, Fig. 3)",
            compare("variation_kept", "A", "chance"),
            compare("variation_layouts", "A", "one_layout"),
        ),
    ]


def _stages(config: ml_collections.ConfigDict, stage_arg: str | None) -> None:
    """The trained stages: CLIP and score CLIP, both priors, the decoder reading z_i and the
    caption (the paper's caption transformer on the CLIP tokenizer's ids), GLIDE's decoder."""
    for name, seed in (("clip", 0), ("score_clip", 100)):
        clip = clip_shapes.get_config(stage_arg)
        clip.data.source = SOURCE
        clip.seed = seed
        config[name] = clip
    config.prior = prior_demo.get_config(stage_arg)
    config.ar_prior = ar_prior_demo.get_config(stage_arg)
    for prior in ("prior", "ar_prior"):
        config[prior].model.num_tokens = config.clip.tokenizer.context_length
    decoder = decoder_demo.get_config(stage_arg)
    decoder.image_size = IMAGE_SIZE
    decoder.data.update(source=SOURCE, image_size=IMAGE_SIZE)
    decoder.model.caption_source = "transformer"
    decoder.model.caption_transformer = dict(
        vocab_size=config.clip.tokenizer.vocab_size,  # the CLIP tokenizer's ids
        max_length=config.clip.tokenizer.context_length,
        width=64 if stage_arg else 128,
        layers=1 if stage_arg else 2,
        heads=2 if stage_arg else 4,
    )
    if not stage_arg:  # one more level for 32 px: 32, 16, 8, 4 (attention at 8 and 4)
        decoder.model.unet.update(channel_mults=(1, 2, 2, 2), attention_levels=(2, 3))
    config.decoder = decoder
    # GLIDE-like: the same U-Net and budget; its z_i always the learned null, its caption
    # dropped for guidance at GLIDE's 20%.
    glide = ml_collections.ConfigDict(decoder.to_dict())
    glide.guidance.update(image_drop_prob=1.0, caption_drop_prob=0.2)
    config.glide_decoder = glide
    # DALL·E: the demo's dVAE and transformer on the study's images, 32 px -> 8×8 codes
    dvae = dvae_shapes.get_config(stage_arg)
    dvae.data.update(source=SOURCE, image_size=IMAGE_SIZE)
    dvae.model.group_count = 3
    config.dvae = dvae
    dalle = dalle_shapes.get_config(stage_arg)
    dalle.data.update(source=SOURCE, image_size=IMAGE_SIZE)
    config.dalle = dalle
    for name in STAGES:  # each stage's train step's FLOPs in <stage>/compute.json
        config[name].train.count_flops = True


def _tier(config: ml_collections.ConfigDict, tier: str) -> None:
    """Replicates, guidance scales and sample counts of a tier."""
    if tier == "full":
        config.update(clip_seeds=(0, 1), seeds=(0, 1, 2), guidance_scales=(1.0, 2.0, 4.0, 8.0))
        # Each replicate and scale sampled as in `:fast` (about 2.5 min a cell here): A's 6
        # replicates × 4 scales in about an hour, `:full`'s budget an arm; the intervals narrow
        # by the replicates, not by more captions.
        config.eval.update(num_single=64, images_per_caption=2, num_pair=64)
        config.eval.update(num_variation_sources=16, variations_per_source=4)
        config.sampling.decoder_steps = 25
        # E's training FLOPs at A's (claim unclip_vs_dalle: within ±25%): the `:fast` run's
        # 1,500 steps of 32 counted dVAE 2.5e12 + transformer 2.2e13 + CLIP 2.8e12 = 2.8e13
        # against A's 9.5e13; four times the transformer's steps give about 9.4e13 (about 40 min
        # here, within `:full`'s hour an arm and beyond `:fast`'s 90 minutes in all).
        config.dalle.train.update(total_steps=6000, batch_size=32, sample_every=6000)
        config.dalle.train.eval_every = 2000
    elif tier == "fast":
        # The demo's transformer budget before its 16×16 codes: what the committed `:fast` E ran.
        config.dalle.train.update(total_steps=1500, batch_size=32, sample_every=1500)
        config.dalle.train.eval_every = 500
        config.update(clip_seeds=(0,), seeds=(0,), guidance_scales=(1.0, 4.0))
        # 2 images a caption and 25 DDIM steps: the arms sample in about a quarter of the time
        # the stages train (two 1000-step decoders, 20 min each here)
        config.eval.update(num_single=64, images_per_caption=2, num_pair=64)
        config.eval.update(num_variation_sources=16, variations_per_source=4)
        config.sampling.decoder_steps = 25
    else:
        config.update(clip_seeds=(0,), seeds=(0,), guidance_scales=(1.0, 4.0))
        config.eval.update(num_single=4, images_per_caption=2, num_pair=2)
        config.eval.update(num_variation_sources=2, variations_per_source=2)
        config.sampling.update(prior_steps=2, decoder_steps=2)
        config.rerank_curve = (1, 8, 16, 32)
        config.bootstrap_replicates = 200


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = arg or "fast"
    if arg not in TIERS:
        raise ValueError(f"study config arg must be one of {list(TIERS)}, got {arg!r}")
    config = ml_collections.ConfigDict()
    config.tier = arg
    config.data_source = SOURCE
    config.data_dir = ""  # TFDS data directory ("" = TFDS's default)
    # each tier's own files: `:full`'s beside `:fast`'s, neither replacing the other
    folders = {"fast": "paper_claims", "full": "paper_claims/full"}
    config.results = f"experiments/results/{folders[arg]}" if arg in folders else ""
    config.table = {"fast": "docs/paper_claims.md", "full": "docs/paper_claims_full.md"}.get(
        arg, ""
    )
    _stages(config, "smoke" if arg == "smoke" else None)
    config.arms = arms()
    config.reference_guidance = 4.0  # the decoder guidance of arms B, C1, C2 (one of the scales)
    config.rerank_curve = (1, 2, 4, 8, 16, 32)  # DALL·E's N, from one draw of the most per image
    # The demo's seed and its prior's and decoder's settings (the decoder's guidance is the arms').
    demo_sampling = demo.sampling_settings()
    names = ("seed", "prior_steps", "decoder_steps", "prior_guidance", "prior_candidates")
    config.sampling = ml_collections.ConfigDict({k: demo_sampling[k] for k in names})
    config.eval = ml_collections.ConfigDict()
    config.bootstrap_replicates = 2000
    config.claims = claims()
    _tier(config, arg)
    base.stage_budgets(config, list(STAGES))
    return config
