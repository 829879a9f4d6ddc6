#!/usr/bin/env bash
# The prepared GPU check: one command, at most ~10 minutes on one GPU, for whenever a GPU machine is
# lent. It writes JSON and a Markdown table to OUT:
#   env.json         torch, CUDA and the card (name, memory)
#   cells.json       a PGD-type cell and the standard suite per task on the device and on the CPU
#                    (benchmarks/device_cells.py): every tensor on the right device, the numbers agreeing
#   throughput.json  PGD throughput against torchattacks, fp32 and bf16, with robust-accuracy agreement
#                    (benchmarks/attack_throughput.py): ViT-S/14 and ViT-B/14 at 224 and 518 px, the tiny ViT
#   compiled.json    PGD throughput of a cell's model eager and under compile: true
#                    (benchmarks/compiled_cell.py): the tiny ViT and ViT-S/14 at 224 px (--quick: the tiny ViT)
#   memory.json      the measured peak of attack steps against the memory plan's estimate
#                    (benchmarks/memory_plan.py): the poster's models, data sets and attacks (--quick: a few)
#   gpu_check.md     the tables of the five
#
#   benchmarks/gpu_check.sh [--device cuda|cuda:N|cpu] [--out DIR] [--quick]
#
# --device cpu --quick is the CI run that keeps the script working without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
OUT=${OUT:-gpu_check}
QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --device, --out, --quick)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
mkdir -p "$OUT"
export TQDM_DISABLE=1

"$PYTHON" - "$DEVICE" "$OUT/env.json" <<'PY'
import json, sys, torch
device, path = sys.argv[1], sys.argv[2]
gpu = device.startswith("cuda")
if gpu and not torch.cuda.is_available():
    sys.exit(f"gpu_check.sh: --device {device} but torch sees no CUDA device (torch {torch.__version__})")
props = torch.cuda.get_device_properties(device) if gpu else None
json.dump({"torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
           "name": props.name if props else "cpu", "memory_gib": props.total_memory / 2**30 if props else None},
          open(path, "w"), indent=2)
print(f"device {device}: {props.name if props else 'cpu'}, torch {torch.__version__}")
PY

"$PYTHON" benchmarks/device_cells.py --device "$DEVICE" --json "$OUT/cells.json"

if [ -n "$QUICK" ]; then
  "$PYTHON" benchmarks/attack_throughput.py --device "$DEVICE" --quick --models vits14,tiny --bf16 all \
    --json "$OUT/throughput.json"
else
  "$PYTHON" benchmarks/attack_throughput.py --device "$DEVICE" --models tiny,vits14,vits14_518,vitb14,vitb14_518 \
    --bf16 all --repeats 3 --json "$OUT/throughput.json"
fi

"$PYTHON" benchmarks/compiled_cell.py --device "$DEVICE" ${QUICK:+--quick} --json "$OUT/compiled.json"

"$PYTHON" benchmarks/memory_plan.py --device "$DEVICE" ${QUICK:+--quick} --json "$OUT/memory.json"

"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
env = json.loads((out / "env.json").read_text())
cells = json.loads((out / "cells.json").read_text())["cells"]
bench = json.loads((out / "throughput.json").read_text())
compiled = json.loads((out / "compiled.json").read_text())
memory = json.loads((out / "memory.json").read_text())["rows"]
lines = [f"# GPU check: {env['name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}", "",
         "## Cells on the device and on the CPU", "", "| task | attack | device | clean | attacked | checks | s |",
         "|---|---|---|---|---|---|---|"]
lines += [f"| {c['task']} | {c['attack']} | {c['device']} | {c['clean']:.4f} | {c['adv']:.4f} | "
          f"{'ok' if c['checks_passed'] else 'FAIL'} | {c['seconds']:.1f} |" for c in cells]
lines += ["", "## PGD throughput (10 steps of 2/255 at 8/255 unless --quick)", "",
          "| model | px | method | median s | img·steps/s | × torchattacks | robust acc | GFLOP/s |",
          "|---|---|---|---|---|---|---|---|"]
for name, model in bench["models"].items():
    for method, r in model["methods"].items():
        robust = "-" if r["robust"][0] is None else f"{sum(r['robust']) / len(r['robust']):.3f}"
        lines.append(f"| {name} | {model['model']['size']} | {method} | {r['median_s']:.3f} | "
                     f"{r['img_steps_per_s']:.1f} | {r['speed_vs_torchattacks']:.2f} | {robust} | "
                     f"{r['achieved_gflops']:.0f} |")
    lines.append(f"| {name} | | bf16 robust samples differing from fp32 (worst round) | "
                 f"{model['bf16_sample_gap']} | | | | |")
lines += ["", f"## compile: true against eager (PGD, {compiled['config']['steps']} steps, batch "
          f"{compiled['config']['batch']})", "", *compiled["table"]]
lines += ["", "## Peak memory of an attack step against the plan's estimate", "",
          "| case | batch | estimate MiB | measured MiB | measured / estimate |", "|---|---|---|---|---|"]
lines += [f"| {r['case']} | {r['batch']} | {r['estimate_bytes'] / 2**20:.1f} | {r['measured_bytes'] / 2**20:.1f} | "
          f"{r['ratio']:.3f} |" for r in memory]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "gpu_check.sh: wrote $OUT/{env,cells,throughput,compiled,memory}.json and $OUT/gpu_check.md"
