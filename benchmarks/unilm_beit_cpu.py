"""CPU side by side: vitseg vs Microsoft's own BEiT code (microsoft/unilm), one forward of a full-size UPerNet.

    python benchmarks/unilm_beit_cpu.py --unilm /tmp/unilm --threads 2 --out benchmarks/results/unilm_beit_cpu.md

A helper process in the mmseg 1.2.2 reference venv (this file with ``--worker``) builds the authors' model as
``tools/make_unilm_beit_fixtures.py`` does (their ``BEiT`` class from the checkout, mmseg's ``UPerHead`` in an
``EncoderDecoder``) at full size, gives it seeded random weights and writes them to a temporary file; vitseg
builds the zoo entry from that file. Every repetition then times ``encode_decode`` (the authors') and
``model(x)`` (vitseg) on the same seeded input at the training size, the order alternating, so machine
noise hits both alike; the logits are compared once. Reported: medians and the ratio vitseg / authors.

Only the standard library and torch are imported at module level: the helper runs in the other venv, where
timm is not installed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODELS = {  # zoo entry -> the authors' file, training size and backbone / head widths
    "upernet_beit_unilm_b16_ade20k": dict(file="beit/semantic_segmentation/backbone/beit.py", img=640,
                                          size=dict(embed=768, depth=12, heads=12, out_indices=(3, 5, 7, 11),
                                                    init_values=0.1, channels=768)),
    "upernet_beitv2_unilm_b16_ade20k": dict(file="beit2/semantic_segmentation/backbone/beit.py", img=512,
                                            size=dict(embed=768, depth=12, heads=12, out_indices=(3, 5, 7, 11),
                                                      init_values=0.1, channels=768)),
}


def _input(img: int) -> torch.Tensor:
    return torch.randn(1, 3, img, img, generator=torch.Generator().manual_seed(0))


def worker(args: argparse.Namespace) -> None:
    """The authors' side: build, write the weights, then time one forward per line read from stdin."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import make_unilm_beit_fixtures as fx  # imports mmcv_ext_stub first
    from mmseg.utils import register_all_modules

    register_all_modules()
    torch.set_num_threads(args.threads)
    spec = MODELS[args.model]
    module = fx.import_authors_backbone(os.path.join(args.unilm, spec["file"]), "unilm_bench_backbone")
    torch.manual_seed(0)
    model = fx.build(module.BEiT, (spec["img"],) * 2, aux_channels=256, **spec["size"])
    fx.randomize(model, 0)
    torch.save(dict(state_dict=model.state_dict()), args.weights)
    x = _input(spec["img"])
    print(f"ready {torch.__version__}", flush=True)
    metas = [dict(img_shape=x.shape[-2:], ori_shape=x.shape[-2:], pad_shape=x.shape[-2:])]
    for line in sys.stdin:
        with torch.no_grad():
            start = time.perf_counter()
            out = model.encode_decode(x, metas)
            ms = 1000 * (time.perf_counter() - start)
        if line.strip() == "save":
            torch.save(out, args.weights + ".out")
        print(json.dumps({"ms": ms}), flush=True)


def bench(args: argparse.Namespace, model_name: str) -> dict:
    import vitseg
    from harness import DEFAULT_MMSEG_PYTHON

    python = args.ref_python or os.environ.get("MMSEG_REF_VENV_PYTHON", DEFAULT_MMSEG_PYTHON)
    if not os.path.exists(python):
        raise FileNotFoundError(f"reference venv python {python} not found: run bash tools/setup_mmseg_reference.sh "
                                "or pass --ref-python")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "authors.pth")
        proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", "--model", model_name, "--unilm",
                                 args.unilm, "--threads", str(args.threads), "--weights", weights],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        try:
            line = ""
            while not line.startswith("ready"):
                line = proc.stdout.readline().strip()
                if not line and proc.poll() is not None:
                    raise RuntimeError(f"the authors' helper exited with {proc.returncode}")
            ref_torch = line.split()[1]
            model = vitseg.create_model(model_name, checkpoint_path=weights).eval()
            x = _input(MODELS[model_name]["img"])

            def theirs(cmd: str = "run") -> float:
                proc.stdin.write(cmd + "\n")
                proc.stdin.flush()
                return json.loads(proc.stdout.readline())["ms"]

            last: dict[str, torch.Tensor] = {}

            def ours() -> float:
                with torch.no_grad():
                    start = time.perf_counter()
                    last["logits"] = model(x)
                    return 1000 * (time.perf_counter() - start)

            ours(), theirs("save")  # warm-up; the authors' logits are written
            ref = torch.load(weights + ".out", weights_only=True)
            err = float((last["logits"] - ref).abs().max() / ref.abs().max())
            times: dict[str, list[float]] = {"vitseg": [], "authors": []}
            for rep in range(args.reps):
                order = [("vitseg", ours), ("authors", theirs)]
                for side, fn in (order if rep % 2 == 0 else order[::-1]):
                    times[side].append(fn())
        finally:
            proc.stdin.close()
            proc.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(model=model_name, img=MODELS[model_name]["img"], vitseg_ms=med["vitseg"], authors_ms=med["authors"],
                ratio=med["vitseg"] / med["authors"], rel_err=err, times=times, torch=torch.__version__,
                authors_torch=ref_torch)


def render(rows: list[dict], args: argparse.Namespace) -> str:
    import platform

    lines = ["| model | input | vitseg ms | authors' code ms | ratio of medians | median paired ratio | "
             "max \\|Δ\\| / max \\|logit\\| |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        paired = statistics.median(a / b for a, b in zip(r["times"]["vitseg"], r["times"]["authors"]))
        lines.append(f"| `{r['model']}` | {r['img']}x{r['img']} | {r['vitseg_ms']:.0f} | {r['authors_ms']:.0f} | "
                     f"{r['ratio']:.2f} | **{paired:.2f}** | {r['rel_err']:.1e} |")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += ["", f"Medians of {args.reps} repetitions after 1 warm-up, vitseg and the authors' code alternating; "
              f"ratio = vitseg / authors. {args.threads} threads, {platform.processor() or platform.machine()}, fp32, "
              f"batch 1, random weights; vitseg on torch {rows[0]['torch']}, the authors' BEiT class "
              f"(microsoft/unilm 768a3c8) with mmseg 1.2.2's UPerHead on torch {rows[0]['authors_torch']} (the "
              "reference venv).", "", f"Run {when}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--render", metavar="JSON", help="only re-render the table of an earlier run's JSON")
    p.add_argument("--unilm", help="a checkout of microsoft/unilm (commit 768a3c8)")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", help="write the markdown table here")
    p.add_argument("--ref-python", help="python of the mmseg reference venv")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if not (args.unilm or args.render):
        p.error("--unilm CHECKOUT is required")
    sys.path[:0] = [HERE, REPO]
    if args.render:
        with open(args.render) as f:
            rows = json.load(f)
    else:
        rows = [bench(args, name) for name in args.models]
    table = render(rows, args)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
