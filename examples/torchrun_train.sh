#!/usr/bin/env bash
# Train examples/train_open_clip.py on 2 CPU processes with DistributedDataParallel.
#
# torchrun starts NPROC ranks on this machine (--standalone: rendezvous on
# localhost only). Each rank runs its own DALI pipeline on its own part of the
# samples, and ClipLoss gathers the features of all ranks, so the loss is
# computed over the global batch of NPROC x --batch-size pairs. With GPUs, set NPROC to the GPU
# count; the script then uses nccl and one GPU per rank.
#
# Usage: examples/torchrun_train.sh [train_open_clip.py options]
#   NPROC=4 examples/torchrun_train.sh --steps 100 --data 'shards/shard-{000000..000099}.tar'
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
nproc="${NPROC:-2}"

# One DALI and one intra-op thread per rank, so 2 ranks fit on 2 cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

exec "$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" \
    "$here/train_open_clip.py" --ddp --workers 1 "$@"
