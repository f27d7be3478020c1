"""Decoder training throughput: our train step (hybrid loss, AdamW, EMA, non-finite guard) against
a PyTorch step of diffusers' Karlo-layout decoder (`UNet2DConditionModel` + `UnCLIPTextProjModel`)
of the same size (`bench_common.SIZES`): forward, ε-MSE loss plus a variance term, backward,
gradient clipping, AdamW and an EMA update.

Both run in one process, alternately, after a warm-up step each. Prints samples/s, the ratio,
XLA's FLOPs per step (cost analysis of our compiled step) and the utilisation against the
device's peak (`--peak-gflops`; on this CPU the nominal AVX-512 FMA peak of its cores), and writes
`experiments/results/bench_train/train_<tag>.json`.

    .venv/bin/python -m experiments.bench_train --sizes tiny,small --batch 8 --steps 5
    JAX_NUM_CPU_DEVICES=2 .venv/bin/python -m experiments.bench_train --tag cpu_2dev

Our step runs data-parallel over the local devices that divide the batch (one per core with
`JAX_NUM_CPU_DEVICES`).
"""

import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from experiments import bench_common as common
from unclip_jax import sharding
from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.nn.precision import COMPUTE_DTYPES
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import setup as setup_lib
from unclip_jax.train import step as step_lib
from unclip_jax.train.decoder_task import DecoderTask

# 2 FMA units × 16 float32 lanes × 2 FLOPs per cycle per core at the nominal 2.6 GHz.
CPU_PEAK_GFLOPS_PER_CORE = 2 * 16 * 2 * 2.6


class PrecomputedCaptions:
    """Stands where the decoder task expects a frozen CLIP: the batches carry CLIP's caption
    encodings and image embeddings already, so nothing is encoded in the step."""

    def caption(self, tokens, mask):
        raise ValueError("caption encodings come with the batch (caption_states, caption_embed)")

    def image_embed(self, images):
        raise ValueError("image embeddings come with the batch (image_embedding)")


class KarloDecoderTask(DecoderTask):
    """The decoder task on batches with `caption_states` [B, L, D], `caption_embed` [B, D]."""

    def caption_inputs(self, batch):
        return {
            "caption_states": batch["caption_states"],
            "caption_embed": batch["caption_embed"],
            "caption_mask": jnp.asarray(batch["mask"]).astype(bool),
        }


def batch_of(size: common.CascadeSize, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    inputs = common.decoder_inputs(size, batch, seed)
    return dict(
        image=np.tanh(inputs["x"]),
        image_embedding=inputs["image_embed"],
        caption_states=inputs["caption_states"],
        caption_embed=inputs["caption_embed"],
        mask=inputs["caption_mask"].astype(np.int32),
    )


class OurStep:
    def __init__(self, size: common.CascadeSize, batch: dict, dtype: str):
        self.model = common.our_decoder(size, COMPUTE_DTYPES[dtype])
        self.task = KarloDecoderTask(
            self.model,
            make_schedule("cosine", 1000),
            size.decoder_size,
            clip=PrecomputedCaptions(),
        )
        devices = common.row_devices(len(batch["image"]))
        mesh = sharding.make_mesh({"data": len(devices)}, devices)
        self.devices = len(devices)
        example = {k: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype) for k, v in batch.items()}
        opt_config = optimizer_lib.OptimizerConfig(
            peak_lr=1e-4, warmup_steps=10, schedule="constant", weight_decay=0.0
        )
        self.key = jax.random.key(0)
        setup = setup_lib.build(
            self.task,
            example,
            len(batch["image"]),
            mesh,
            sharding.normalize_rules(sharding.DEFAULT_RULES),
            opt_config,
            step_lib.StepConfig(),
            self.key,
        )
        self.state = setup.create_state()
        self.step = setup.step
        self.batch = step_lib.to_global(batch, mesh)
        self.step_flops = common.flops(setup.pure_step, self.state, self.batch, self.key)
        self.params = common.num_params(self.state.params)

    def __call__(self) -> None:
        self.state, metrics = self.step(self.state, self.batch, self.key)
        jax.block_until_ready(metrics["loss"])


class TorchStep:
    def __init__(self, size: common.CascadeSize, batch: dict):
        self.unet, self.text_proj = common.diffusers_decoder(size)
        self.unet.train()
        self.text_proj.train()
        self.params = [*self.unet.parameters(), *self.text_proj.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in self.params]
        self.batch = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
        alphas = torch.cos((torch.arange(1001) / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2
        self.alpha_bar = (alphas / alphas[0]).clamp(1e-5, 1.0)

    def __call__(self) -> None:
        b = self.batch
        x0 = b["image"].permute(0, 3, 1, 2)
        t = torch.randint(0, 1000, (x0.shape[0],))
        noise = torch.randn_like(x0)
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context, added = self.text_proj(
            image_embeddings=b["image_embedding"],
            prompt_embeds=b["caption_embed"],
            text_encoder_hidden_states=b["caption_states"],
            do_classifier_free_guidance=False,
        )
        mask = F.pad(b["mask"].bool(), (self.text_proj.clip_extra_context_tokens, 0), value=True)
        out = self.unet(
            x_t, t, encoder_hidden_states=context, class_labels=added, attention_mask=mask
        ).sample
        loss = F.mse_loss(out[:, :3], noise) + 1e-3 * out[:, 3:].square().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1e-4)


def bench_size(name: str, batch_size: int, steps: int, dtype: str, peak: float) -> dict:
    size = common.SIZES[name]
    batch = batch_of(size, batch_size)
    ours, theirs = OurStep(size, batch, dtype), TorchStep(size, batch)
    first_s = common.seconds(ours)
    threads = common.pick_torch_threads(theirs, repeats=1)
    load_before = common.load_average()
    times = {"ours": [], "torch": []}
    for _ in range(steps):
        times["ours"].append(common.seconds(ours))
        times["torch"].append(common.seconds(theirs))
    ours_sps = batch_size / statistics.median(times["ours"])
    torch_sps = batch_size / statistics.median(times["torch"])
    row = dict(
        size=name,
        batch=batch_size,
        dtype=dtype,
        params=ours.params,
        ours_samples_per_s=ours_sps,
        torch_samples_per_s=torch_sps,
        ratio=ours_sps / torch_sps,
        flops_per_step=ours.step_flops,
        ours_flops_per_s=ours.step_flops * ours_sps / batch_size,
        torch_flops_per_s=ours.step_flops * torch_sps / batch_size,
        peak_flops=peak,
        ours_utilisation=ours.step_flops * ours_sps / batch_size / peak,
        torch_utilisation=ours.step_flops * torch_sps / batch_size / peak,
        torch_threads=threads,
        devices=ours.devices,
        first_step_s=first_s,
        times_s=times,
        load_average=[load_before, common.load_average()],
    )
    print(
        f"{name:6s} batch {batch_size:3d} {dtype}  ours {ours_sps:7.2f} samples/s  torch "
        f"{torch_sps:7.2f} samples/s ({threads} thr)  {ours.devices} dev  "
        f"ratio {row['ratio']:4.2f}  "
        f"{ours.step_flops / 1e9:7.1f} GFLOP/step  util ours {100 * row['ours_utilisation']:4.1f}% "
        f"torch {100 * row['torch_utilisation']:4.1f}%  load {row['load_average']}",
        flush=True,
    )
    return row


def main() -> None:
    parser = common.argument_parser(
        __doc__, sizes="tiny,small", batch=8, steps=5, dtype="float32", tag=None
    )
    parser.add_argument(
        "--peak-gflops",
        type=float,
        default=CPU_PEAK_GFLOPS_PER_CORE * (os.cpu_count() or 1),
        help="device peak for the utilisation (default: this CPU's nominal float32 peak)",
    )
    args = parser.parse_args()
    sizes = common.split_names(parser, "--sizes", args.sizes, common.SIZES)
    if args.batch < 1 or args.steps < 1:
        parser.error(f"--batch and --steps must be >= 1, got {args.batch} and {args.steps}")
    info = common.machine()
    print(info, flush=True)
    rows = [
        bench_size(name, args.batch, args.steps, args.dtype, args.peak_gflops * 1e9)
        for name in sizes
    ]
    tag = args.tag or jax.default_backend()
    path = common.write_results("bench_train", f"train_{tag}", dict(machine=info, rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
