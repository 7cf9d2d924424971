"""Train a small open_clip ViT on image-text shards with pgs_dali patch masks.

By default it writes shards from the 80 COCO photos in ../shared/data/coco-mini
(one sample per photo, its first caption) and trains a reduced ViT that runs
on a CPU. The training loop has the same shape as open_clip_train's: it gets
``(images, texts)`` from ``get_data``, and the images carry the keep indices
that ``install_pgs`` put to use in the vision tower.

Single process:

    python examples/train_open_clip.py --steps 60 --strategy pgs --mask-ratio 0.5

Several processes (CPU with gloo, or one GPU each with nccl), see
examples/torchrun_train.sh:

    torchrun --standalone --nproc_per_node 2 examples/train_open_clip.py --ddp

The last line printed is one JSON object with these keys:

- first_loss, and last_loss (the mean of the last 5 steps);
- mean_step_s: forward, backward and optimizer step, without the first step
  and without data loading; mean_data_s: the wait for the next batch;
- steps, strategy, mask_ratio, world_size;
- tokens: vision tokens per image, the class token plus the kept patches.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pgs_dali.integrations.open_clip import get_data, install_pgs
from pgs_dali.masking.config import STRATEGIES, MaskConfig

logger = logging.getLogger("train_open_clip")

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def small_clip_config(image_size: int, patch_size: int, width: int, layers: int) -> dict:
    """Return an open_clip ``CLIP(**config)`` config for a reduced ViT and text tower.

    Both towers use ``width`` channels, ``layers`` blocks and 64-channel
    attention heads. The text tower keeps CLIP's 77-token context and
    49408-token vocabulary, so open_clip's tokenizer works unchanged.
    """
    heads = max(1, width // 64)
    return {
        "embed_dim": width,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "layers": layers,
            "head_width": width // heads,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": width,
            "heads": heads,
            "layers": layers,
        },
    }


def write_coco_shards(output_dir: Path, source: Path = COCO_MINI, samples_per_shard: int = 20) -> str:
    """Write coco-mini as shards, as ``pgs-dali make-shards`` does, and return their glob.

    Each photo becomes one sample with its first caption.
    """
    from pgs_dali.shards.convert import coco_samples, write_shards

    captions_file = source / "annotations" / "captions_train2017.json"
    if not captions_file.is_file():
        raise FileNotFoundError(
            f"coco-mini captions not found at {captions_file}; pass --data with your own shards"
        )
    summary = write_shards(
        coco_samples(captions_file, source / "images"), output_dir, samples_per_shard, prefix="coco-"
    )
    logger.info(
        "wrote %d samples in %d shards to %s, skipped %d",
        summary.samples, len(summary.shards), output_dir, sum(summary.skipped.values()),
    )
    return str(output_dir / "coco-*.tar")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="training shards (list, glob or brace pattern); default: coco-mini")
    parser.add_argument(
        "--shards-dir", type=Path, help="where to write the coco-mini shards (default: a temporary folder)"
    )
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (default: 60)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="pgs", help="patch-mask strategy")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="fraction of patches to drop")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch and rank")
    parser.add_argument("--image-size", type=int, default=112, help="square crop in pixels")
    parser.add_argument("--patch-size", type=int, default=16, help="ViT patch size in pixels")
    parser.add_argument("--width", type=int, default=128, help="channels of both towers")
    parser.add_argument("--layers", type=int, default=3, help="transformer blocks of both towers")
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the shuffle and the masks")
    parser.add_argument("--workers", type=int, default=2, help="DALI CPU threads per rank")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads on the CPU (default: cores left after --workers, at least 1)",
    )
    parser.add_argument("--device", default=None, help='"cpu", "cuda" (default: cuda if available)')
    parser.add_argument("--log-every", type=int, default=10, help="log the loss every N steps")
    parser.add_argument(
        "--ddp", action="store_true", help="use torch.distributed (run under torchrun) with DistributedDataParallel"
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    rank, world_size, device = setup_distributed(args)
    try:
        result = train(args, rank, world_size, device)
    finally:
        if args.ddp:
            torch.distributed.destroy_process_group()
    if rank == 0:
        print(json.dumps(result), flush=True)
    return 0


def setup_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """Return (rank, world size, device); start the process group with --ddp."""
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.ddp:
        return 0, 1, device

    if "RANK" not in os.environ:
        raise SystemExit("--ddp needs the environment torchrun sets (RANK, WORLD_SIZE, ...); start it with torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def prepare_data_pattern(args: argparse.Namespace, rank: int) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """Return the shard pattern; rank 0 writes the coco-mini shards when --data is absent."""
    if args.data:
        return args.data, None
    temporary = None
    shards_dir = args.shards_dir
    if shards_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="pgs-coco-") if rank == 0 else None
        shards_dir = Path(temporary.name) if temporary else None
    if rank == 0:
        pattern = write_coco_shards(Path(shards_dir))
    else:
        pattern = None
    if args.ddp:
        # Every rank needs rank 0's folder, which may be a temporary one.
        shared = [pattern]
        torch.distributed.broadcast_object_list(shared, src=0)
        pattern = shared[0]
    return pattern, temporary


def train(args: argparse.Namespace, rank: int, world_size: int, device: torch.device) -> dict:
    import open_clip

    pattern, temporary = prepare_data_pattern(args, rank)

    if args.torch_threads is not None or not torch.cuda.is_available():
        # DALI's decoder threads run beside the training step; torch's OpenMP
        # threads competing with them for the same cores made steps about 20x
        # slower on a 2-core machine.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(args.torch_threads or max(1, cores - args.workers))
    torch.manual_seed(args.seed)
    model = open_clip.CLIP(**small_clip_config(args.image_size, args.patch_size, args.width, args.layers))
    install_pgs(model)
    model.to(device)
    mask = MaskConfig(strategy=args.strategy, mask_ratio=args.mask_ratio, patch_size=args.patch_size)
    grid = args.image_size // args.patch_size
    tokens = 1 + mask.num_kept(args.image_size, args.image_size)
    logger.info("vision tokens per image: %d of %d", tokens, 1 + grid * grid)

    data_args = argparse.Namespace(
        train_data=pattern,
        batch_size=args.batch_size,
        workers=args.workers,
        seed=args.seed,
        rank=rank,
        world_size=world_size,
        device=str(device),
        pgs_strategy=args.strategy,
        pgs_mask_ratio=args.mask_ratio,
    )
    data = get_data(data_args, model=model)
    dataloader = data["train"].dataloader
    if dataloader.num_batches < 1:
        raise SystemExit(
            f"the shards give no full batch of {args.batch_size} per rank; lower --batch-size"
        )

    if args.ddp:
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    loss_fn = open_clip.ClipLoss(rank=rank, world_size=world_size, gather_with_grad=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    losses: list[float] = []
    step_times: list[float] = []
    data_times: list[float] = []
    model.train()
    epoch = 0
    step = 0
    while step < args.steps:
        data["train"].set_epoch(epoch)
        end = time.perf_counter()
        for images, texts in dataloader:
            images = images.to(device=device, non_blocking=True)
            texts = texts.to(device=device, non_blocking=True)
            start = time.perf_counter()
            data_times.append(start - end)

            image_features, text_features, logit_scale = model(images, texts)
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                # ln(100), the logit-scale cap of CLIP and open_clip_train.
                unwrap(model).logit_scale.clamp_(0, 4.6052)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

            end = time.perf_counter()
            step_times.append(end - start)
            losses.append(loss.item())
            step += 1
            if rank == 0 and (step % args.log_every == 0 or step == 1):
                logger.info(
                    "step %d/%d epoch %d loss %.4f step %.3f s data %.3f s",
                    step, args.steps, epoch, losses[-1], step_times[-1], data_times[-1],
                )
            if step >= args.steps:
                break
        epoch += 1

    if temporary is not None:
        temporary.cleanup()
    timed = step_times[1:] or step_times
    return {
        "first_loss": round(losses[0], 4),
        "last_loss": round(statistics.fmean(losses[-5:]), 4),
        "mean_step_s": round(statistics.fmean(timed), 4),
        "mean_data_s": round(statistics.fmean(data_times[1:] or data_times), 4),
        "steps": step,
        "strategy": args.strategy,
        "mask_ratio": args.mask_ratio,
        "tokens": tokens,
        "world_size": world_size,
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


if __name__ == "__main__":
    sys.exit(main())
