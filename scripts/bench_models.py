"""Parameters and training-step time (forward + backward) of each encoder's InkNet.

Usage: ``python scripts/bench_models.py [--tiles 64 256] [--batch 8] [--slices 30] [--device cpu]``.
`benchmark_models` is importable (``scripts/benchmark.py`` reuses it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.components import NetConfig, build_net  # noqa: E402
from modules.components.encoders3d import ENCODERS_3D  # noqa: E402
from modules.losses import InkLoss  # noqa: E402

DEFAULT_ENCODERS = (
    "resnet10t",
    "resnet18",
    "resnet34",
    "efficientnet_b0",
    "convnext_nano",
    "tiny3d",
    "r3d_18",
    "mc3_18",
    "r2plus1d_18",
)


def _step(net: torch.nn.Module, loss_fn: InkLoss, image: torch.Tensor, label: torch.Tensor) -> float:
    start = time.perf_counter()
    net.zero_grad(set_to_none=True)
    loss_fn(net(image), label).backward()
    if image.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def benchmark_models(
    encoders: Sequence[str] = DEFAULT_ENCODERS,
    tile_sizes: Sequence[int] = (64, 256),
    num_slices: int = 30,
    batch_size: int = 8,
    repeats: int = 3,
    device: str = "cpu",
    measure_batch_3d: dict[int, int] | None = None,
    slow_step_s: float = 5.0,
) -> list[dict[str, float | int | str]]:
    """Times one training step (forward, InkLoss, backward) of `build_net(encoder)` per encoder and tile size.

    Args:
        encoders: encoder names (timm or 3-D).
        tile_sizes: tile edges T.
        num_slices: depth D.
        batch_size: batch the step time refers to.
        repeats: timed steps after a warm-up step (median reported).
        device: ``cpu`` or ``cuda``.
        measure_batch_3d: ``{tile: b}``: time 3-D encoders at batch b for that tile and scale to `batch_size`
            (3-D stacks at 256 px take minutes per batch of 8 on a CPU).
        slow_step_s: a warm-up step slower than this is reported as is, without repeats.

    Returns:
        One dict per (encoder, tile): encoder, tile, params_m, measured_batch, step_s (for `batch_size`).
    """
    rows: list[dict[str, float | int | str]] = []
    loss_fn = InkLoss().to(device)
    for encoder in encoders:
        net = build_net(num_slices, NetConfig(encoder=encoder)).to(device).train()
        params = sum(p.numel() for p in net.parameters()) / 1e6
        for tile in tile_sizes:
            batch = batch_size
            if encoder in ENCODERS_3D and measure_batch_3d and tile in measure_batch_3d:
                batch = min(batch_size, measure_batch_3d[tile])
            image = torch.rand(batch, num_slices, tile, tile, device=device)
            label = (torch.rand(batch, 1, tile, tile, device=device) > 0.5).float()
            first = _step(net, loss_fn, image, label)
            times = [first] if first > slow_step_s else [_step(net, loss_fn, image, label) for _ in range(repeats)]
            step = statistics.median(times) * batch_size / batch
            rows.append({"encoder": encoder, "tile": tile, "params_m": params, "measured_batch": batch, "step_s": step})
            print(f"{encoder:16s} T={tile:4d} params={params:6.2f}M batch={batch} step={step:8.3f}s", flush=True)
        del net
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Prints a markdown table of parameters and step times."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS))
    parser.add_argument("--tiles", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--measure-batch-3d", nargs="*", default=[], help="TILE:BATCH pairs, e.g. 256:1")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    measure = {int(t): int(b) for t, b in (pair.split(":") for pair in args.measure_batch_3d)}
    rows = benchmark_models(
        args.encoders, args.tiles, args.slices, args.batch, args.repeats, args.device, measure or None
    )
    # Ratios against the first encoder measured in this same run (the baseline), so machines compare.
    baseline = {r["tile"]: r["step_s"] for r in rows if r["encoder"] == args.encoders[0]}
    print(f"\nstep time per batch of {args.batch}, D={args.slices}; (×) = ratio to {args.encoders[0]} at the same tile")
    print("\n| encoder | params (M) | " + " | ".join(f"step T={t} (s)" for t in args.tiles) + " |")
    print("|---|---:|" + "---:|" * len(args.tiles))
    for encoder in args.encoders:
        cells = {r["tile"]: r for r in rows if r["encoder"] == encoder}
        first = next(iter(cells.values()))
        steps = []
        for tile in args.tiles:
            r = cells[tile]
            note = (
                f" (×{args.batch // r['measured_batch']} of b={r['measured_batch']})"
                if r["measured_batch"] != args.batch
                else ""
            )
            steps.append(f"{r['step_s']:.2f} ({r['step_s'] / baseline[tile]:.1f}×){note}")
        print(f"| {encoder} | {first['params_m']:.2f} | " + " | ".join(steps) + " |")


if __name__ == "__main__":
    main()
