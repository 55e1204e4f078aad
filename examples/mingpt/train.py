"""Train a tiny character-level GPT with DistributedDataParallel, with checkpoint/resume.

Started once per rank by a launcher that sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT (torchrun, or ``corral run``). Without WORLD_SIZE it
runs as a single process. Only torch and the standard library are needed.

Rank 0 prints ``step {step} loss {train:.4f} val {val:.4f}`` at every eval,
saves a checkpoint there, and ends with ``final step {step} loss {train:.4f}``.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import GPT, GPTConfig, generate  # noqa: E402

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
KEEP_CHECKPOINTS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--steps", type=int, default=200, help="total optimizer steps to reach (default 200)"
    )
    p.add_argument(
        "--batch-size", type=int, default=16, help="sequences per rank per step (default 16)"
    )
    p.add_argument(
        "--block-size", type=int, default=64, help="context length in characters (default 64)"
    )
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=96)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (default): CUDA + nccl when each local rank can have a GPU, else CPU + gloo",
    )
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    p.add_argument("--warmup", type=int, default=10, help="linear warmup steps (default 10)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument(
        "--eval-every",
        type=int,
        default=25,
        help="eval + checkpoint interval in steps (default 25)",
    )
    p.add_argument(
        "--eval-iters",
        type=int,
        default=4,
        help="batches per rank per split for an eval (default 4)",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=HERE / "checkpoints",
        help="where checkpoints go (default: checkpoints/ next to this script)",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resume from the latest checkpoint in --checkpoint-dir if there is one (default on)",
    )
    p.add_argument(
        "--seed", type=int, default=1337, help="base seed; rank r samples batches with seed + r"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=HERE / "data" / "devils_dictionary.txt",
        help="UTF-8 text file to train on (default: the shipped public-domain text)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=0,
        help="rank 0 prints this many generated characters at the end",
    )
    args = p.parse_args(argv)
    if args.steps < 0 or args.eval_every < 1 or args.eval_iters < 1 or args.batch_size < 1:
        p.error("--steps must be >= 0; --eval-every, --eval-iters and --batch-size must be >= 1")
    return args


# --------------------------------------------------------------------------- distributed setup


class Dist:
    """Rank/world info, with no-op collectives when running as one process."""

    def __init__(self, device: str = "auto") -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.enabled = self.world_size > 1
        if device == "auto":
            # NCCL needs one GPU per rank on a node; with fewer, train on the CPU.
            enough = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
            device = "cuda" if enough else "cpu"
        if device == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("--device cuda: CUDA is not available")
            self.device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
            backend = "nccl"
        else:
            self.device = torch.device("cpu")
            backend = "gloo"
        if self.enabled:
            dist.init_process_group(backend, init_method="env://")
        self.is_main = self.rank == 0

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.world_size

    def broadcast(self, obj):
        """Send rank 0's ``obj`` (anything torch.save can write) to every rank.

        Serialised with torch.save into a byte tensor; unlike
        dist.broadcast_object_list this does not need NumPy.
        """
        if not self.enabled:
            return obj
        payload = bytearray()
        if self.is_main:
            buf = io.BytesIO()
            torch.save(obj, buf)
            payload = bytearray(buf.getbuffer())
        size = torch.tensor([len(payload)], dtype=torch.long, device=self.device)
        dist.broadcast(size, src=0)
        if not self.is_main:
            payload = bytearray(int(size.item()))
        host = torch.frombuffer(payload, dtype=torch.uint8)  # shares memory with payload
        wire = host.to(self.device)
        dist.broadcast(wire, src=0)
        if wire.data_ptr() != host.data_ptr():
            host.copy_(wire.cpu())
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def log(d: Dist, msg: str) -> None:
    if d.is_main:
        print(msg, flush=True)


# --------------------------------------------------------------------------- data


def load_text(path: Path) -> tuple[torch.Tensor, list[str]]:
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    return ids, chars


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, gen: torch.Generator, device):
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen)
    offsets = torch.arange(block_size + 1)
    window = data[starts[:, None] + offsets]  # (B, T+1)
    x, y = window[:, :-1], window[:, 1:]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(ckpt_dir: Path, state: dict) -> Path:
    """Write atomically: a reader sees either the old set of files or the complete new one."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"ckpt_{state['step']:07d}.pt"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    old = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CKPT_RE.match(p.name)))
    for _, stale in old[:-KEEP_CHECKPOINTS]:
        stale.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- training


@torch.no_grad()
def estimate_loss(model, splits: dict, args, d: Dist) -> dict[str, float]:
    """Mean loss on fixed batches (the same at every eval) per rank, averaged over ranks."""
    model.eval()
    out = {}
    for name, data in splits.items():
        gen = torch.Generator().manual_seed(args.seed + 7919 * (d.rank + 1) + len(name))
        total = 0.0
        for _ in range(args.eval_iters):
            x, y = get_batch(data, args.batch_size, args.block_size, gen, d.device)
            total += model(x, y)[1].item()
        out[name] = d.mean(total / args.eval_iters)
    model.train()
    return out


def lr_at(step: int, args) -> float:
    return args.lr * min(1.0, step / max(1, args.warmup))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

    d = Dist(args.device)
    t0 = time.perf_counter()
    ids, chars = load_text(args.data)
    n_val = max(len(ids) // 10, args.block_size + 2)
    splits = {"train": ids[:-n_val], "val": ids[-n_val:]}

    cfg = GPTConfig(
        vocab_size=len(chars),
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=args.dropout,
    )
    torch.manual_seed(args.seed)  # identical init everywhere (DDP also broadcasts rank 0's weights)
    model = GPT(cfg).to(d.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.99),
    )

    # Rank 0 reads the checkpoint and broadcasts it, so every rank resumes from the
    # same state even when the other ranks cannot see rank 0's filesystem.
    start_step = 0
    ckpt = None
    if args.resume and d.is_main:
        path = latest_checkpoint(args.checkpoint_dir)
        if path is not None:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    elif not args.resume and d.is_main and args.checkpoint_dir.is_dir():
        # Starting over: drop the old run's checkpoints so that a later resume cannot
        # pick one of them up, and pruning does not delete the new ones.
        for old in args.checkpoint_dir.iterdir():
            if CKPT_RE.match(old.name):
                old.unlink(missing_ok=True)
    ckpt = d.broadcast(ckpt)
    if ckpt is not None:
        if ckpt["config"] != cfg.to_dict() or ckpt["vocab"] != chars:
            log(
                d,
                f"error: the checkpoint in {args.checkpoint_dir} has model config "
                f"{ckpt['config']} (or was made from another --data); pass the same "
                "options, --no-resume, or another --checkpoint-dir",
            )
            d.close()
            return 2
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_step = int(ckpt["step"])
        log(d, f"resumed from step {start_step}")
        del ckpt

    log(
        d,
        f"world_size {d.world_size} device {d.device.type} params {model.num_params():,} "
        f"vocab {len(chars)} train_chars {len(splits['train']):,} steps {start_step}->{args.steps}",
    )

    ddp_model = (
        DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if d.enabled
        else model
    )

    # Rank r draws batches from seed + r; the stream is offset by the start step so a
    # resumed run does not replay the batches it already trained on.
    gen = torch.Generator().manual_seed(args.seed + d.rank + 1_000_003 * start_step)

    last = None
    if start_step == 0:
        last = estimate_loss(model, splits, args, d)
        log(d, f"step 0 loss {last['train']:.4f} val {last['val']:.4f}")

    model.train()
    for step in range(start_step + 1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        x, y = get_batch(splits["train"], args.batch_size, args.block_size, gen, d.device)
        _, loss = ddp_model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()

        if step % args.eval_every == 0 or step == args.steps:
            last = estimate_loss(model, splits, args, d)
            log(d, f"step {step} loss {last['train']:.4f} val {last['val']:.4f}")
            if d.is_main:
                save_checkpoint(
                    args.checkpoint_dir,
                    {
                        "step": step,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "config": cfg.to_dict(),
                        "vocab": chars,
                        "world_size": d.world_size,
                    },
                )

    final_step = max(start_step, args.steps)
    if last is None:  # resumed at or past --steps: nothing to train, just report
        last = estimate_loss(model, splits, args, d)
    log(d, f"final step {final_step} loss {last['train']:.4f}")
    log(d, f"elapsed {time.perf_counter() - t0:.1f}s")

    if args.sample > 0 and d.is_main:
        prompt = torch.tensor([[chars.index("\n")]] if "\n" in chars else [[0]], device=d.device)
        out = generate(
            model,
            prompt,
            args.sample,
            temperature=0.8,
            top_k=20,
            generator=torch.Generator(device=d.device).manual_seed(args.seed),
        )
        print("".join(chars[i] for i in out[0].tolist()), flush=True)

    d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
