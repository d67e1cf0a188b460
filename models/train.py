"""`python -m models.train`: resumable training of one method on a folder of HR images.

L1 loss on random query pixels of random crops at a random scale in [1, 4] per batch, with
flips/transposes, Adam and a cosine learning rate over a planned number of steps that carries
across resumed runs (a run may stop early with --minutes and continue later). The training
state is two safetensors files (weights, and Adam's second moments in bfloat16 to keep files
small) written every few minutes; `--resume` continues from them, and also from weights alone.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models import registry
from models.allocator import retain_freed_memory
from models.images import list_images, open_rgb, to_tensor
from models.lineage import chain_length, code_version, init_record, run_metadata
from models.sampling import PatchSampler

DEFAULT_DATA = ("../shared/datasets/train",)


@dataclass
class Config:
    """One training configuration; `cpu` is the smaller one for machines without a GPU."""

    batch: int = 16
    patch: int = 48
    queries: int = 2304
    lr: float = 3e-4
    total_steps: int = 20000
    warmup_steps: int = 300

    @classmethod
    def preset(cls, name: str) -> Config:
        if name == "gpu":
            return cls()
        if name == "cpu":
            return cls(batch=4, patch=32, queries=1024, lr=2e-4, total_steps=4000)
        raise ValueError(f"unknown preset {name!r}")


def learning_rate(cfg: Config, step: int, fresh_steps: int) -> float:
    """Cosine over the planned steps, with a warm-up after every fresh optimiser."""
    progress = min(1.0, step / cfg.total_steps)
    cosine = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    warmup = max(1, min(cfg.warmup_steps, cfg.total_steps // 10))
    return cfg.lr * cosine * min(1.0, (fresh_steps + 1) / warmup)


def load_images(folders: list[str], device: torch.device) -> list[torch.Tensor]:
    paths = [p for folder in folders for p in list_images(folder)]
    return [to_tensor(open_rgb(p)).to(device) for p in paths]


def save_state(out: Path, model, optimizer, meta: dict) -> None:
    """Write model.safetensors (fp32 + metadata) and optim.safetensors (Adam v in bf16), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = dict(model.named_parameters())
    moments = {}
    for name, p in names.items():
        st = optimizer.state.get(p)
        if st and "exp_avg_sq" in st:
            moments[name] = st["exp_avg_sq"].detach().to("cpu", torch.bfloat16).contiguous()
    # The run's metadata (sampler state included) goes with the weights only: nothing reads a copy.
    train_meta = {"train": json.dumps(meta)}
    for fname, tensors, metadata in (
        ("model.safetensors", weights, train_meta),
        ("optim.safetensors", moments, None),
    ):
        tmp = out / (fname + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(out / fname)


def load_state(out: Path, model, optimizer, device, step: int) -> bool:
    """Restore weights (any float dtype) and, when present, Adam's second moments (True)."""
    model.load_state_dict({k: v.float() for k, v in load_file(str(out / "model.safetensors")).items()})
    optim_file = out / "optim.safetensors"
    if not optim_file.is_file():
        return False
    moments = load_file(str(optim_file))
    for name, p in model.named_parameters():
        if name in moments:
            optimizer.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": moments[name].to(device, torch.float32),
            }
    return True


def init_from(model: torch.nn.Module, path: Path) -> int:
    """Copy every tensor whose name and shape match (e.g. the shared trunk); returns how many."""
    source = load_file(str(path))
    own = model.state_dict()
    matched = {k: v.float() for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return len(matched)


def run_seed(given: int | None, saved: dict, lineage: dict | None) -> int:
    """The seed of a run: as given, as saved by the run being resumed (0 for runs saved before
    seeds were kept), else the length of the --init chain. Every run of a chain then draws new
    crops, scales and knobs; with one fixed seed each run would see its parent's samples again.
    """
    if given is not None:
        return given
    if saved:
        return int(saved.get("seed", 0))
    return chain_length(lineage)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=registry.available())
    ap.add_argument("--data", nargs="+", default=list(DEFAULT_DATA), help="folders of HR training images")
    ap.add_argument("--out", default=None, help="run folder (default runs/<method>)")
    ap.add_argument("--resume", action="store_true", help="continue from the run folder's state")
    ap.add_argument(
        "--init", default=None, help="start from the matching tensors of these weights (init chain)"
    )
    ap.add_argument(
        "--richest-only", action="store_true", help="train only the richest tier (e.g. plain SRNO)"
    )
    ap.add_argument("--preset", choices=("gpu", "cpu"), default=None, help="default: gpu on CUDA, else cpu")
    ap.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    ap.add_argument("--patch", type=int, default=None, help="override the preset's LR patch size")
    ap.add_argument("--queries", type=int, default=None, help="override the preset's queries per patch")
    ap.add_argument("--lr", type=float, default=None, help="override the preset's peak learning rate")
    ap.add_argument("--device", default=None)
    ap.add_argument("--minutes", type=float, default=None, help="stop after this many minutes of this run")
    ap.add_argument("--steps", type=int, default=None, help="planned total steps (the schedule's length)")
    ap.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    ap.add_argument("--log-every", type=int, default=200)
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="crops, scales and knobs; default: the number of runs in the --init chain (0 fresh)",
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = Config.preset(args.preset or ("gpu" if device.type == "cuda" else "cpu"))
    for field in ("steps", "batch", "patch", "queries", "lr"):
        value = getattr(args, field)
        if value:
            setattr(cfg, "total_steps" if field == "steps" else field, value)
    out = Path(args.out or f"runs/{args.method}")

    resuming = args.resume and (out / "model.safetensors").is_file()
    saved = run_metadata(out) if resuming else {}
    # The init weights' training chain, taken when the run starts: the init path may change later.
    lineage = init_record(Path(args.init)) if args.init and not resuming else saved.get("init_training")
    seed = run_seed(args.seed, saved, lineage)
    torch.manual_seed(seed)
    model = registry.build(args.method).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    images = load_images(args.data, device)
    sampler = PatchSampler(images, cfg.patch, cfg.queries, cfg.batch, seed=seed)
    knob_rng = random.Random(seed + 1)
    step, elapsed, fresh_steps = 0, 0.0, 0
    if resuming:
        step, elapsed = int(saved.get("step", 0)), float(saved.get("elapsed_s", 0.0))
        had_optim = load_state(out, model, optimizer, device, step)
        fresh_steps = cfg.warmup_steps if had_optim else 0
        if "sampler" in saved:
            sampler.set_state(saved["sampler"])
            knob_rng.seed(seed + 1 + step)
        print(f"resumed {args.method} at step {step} ({elapsed / 60:.1f} min trained, optimiser {had_optim})")
    elif args.init:
        copied = init_from(model, Path(args.init))
        print(f"initialised {copied} tensors of {args.method} from {args.init} (seed {seed})")

    def meta() -> dict:
        return {
            "method": args.method,
            "step": step,
            "elapsed_s": elapsed,
            "config": asdict(cfg),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "data": args.data,
            "images": len(images),
            "sampler": sampler.state(),
            "init": args.init,
            "init_training": lineage,
            "seed": seed,
            "richest_only": args.richest_only,
            "code": code,
        }

    code = code_version()
    richest = model.tiers()[-1].knob
    start = last_save = time.time()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.method}: {n_params} params, {len(images)} images, device {device}, config {asdict(cfg)}")
    bar = tqdm(total=cfg.total_steps, initial=step, disable=None, desc=args.method, file=sys.stdout)
    running, count = 0.0, 0
    stop_requested: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.append(signum))
    while not stop_requested:
        if step >= cfg.total_steps:
            break
        if args.minutes is not None and time.time() - start >= args.minutes * 60:
            break
        t0 = time.time()
        batch = sampler.sample()
        knob = richest if args.richest_only else model.sample_training_knob(batch.scale, knob_rng)
        if hasattr(model, "training_loss"):
            loss = model.training_loss(batch.lr, batch.coord, batch.out_size, knob, batch.target)
        else:
            loss = F.l1_loss(model(batch.lr, batch.coord, batch.out_size, knob), batch.target)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, fresh_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        fresh_steps += 1
        running += loss.item()
        count += 1
        elapsed += time.time() - t0
        bar.update(1)
        if step % args.log_every == 0:
            bar.set_postfix(loss=f"{running / count:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if bar.disable:
                print(
                    f"{args.method} step {step} loss {running / count:.4f} "
                    f"lr {optimizer.param_groups[0]['lr']:.2e} {elapsed / 60:.1f} min",
                    flush=True,
                )
            running, count = 0.0, 0
        if time.time() - last_save >= args.save_every * 60:
            save_state(out, model, optimizer, meta())
            last_save = time.time()
    bar.close()
    save_state(out, model, optimizer, meta())
    print(f"{args.method}: saved step {step} to {out} ({elapsed / 60:.1f} min trained)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
