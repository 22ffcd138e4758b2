#!/usr/bin/env bash
# Post-train a vision tower with generative feedback: a launcher for `python -m enhance train`.
# Recipes live in enhance/configs/ and method names in the method registry; this script only picks the
# launcher. A multi-stage method (GenHancer) runs all its stages in the one command.
set -euo pipefail
source "$(dirname "$0")/_common.sh"

usage() {
  cat <<'USAGE'
Usage: bash scripts/enhance.sh --method M --output DIR [options]

  --method M          a registered method (python -m enhance presets --methods)      (required)
  --output DIR        run directory; the enhanced tower lands in DIR/vision_tower  (required)
  --preset P          paper | toy | a preset name or YAML path                     (default: paper)
                        paper: the published recipe <method>-<backbone>
                        toy:   tiny-<method> on the tiny zoo (needs --zoo)
  --backbone B        with --preset paper: the backbone (python -m enhance presets lists the
                      <method>-<backbone> presets)                       (default: openai-l14-224)
  --vision-tower SPEC tower to start from (default: the preset's)
  --generator PATH    frozen generator (SD-2.1 dir, Stable unCLIP dir, VAE or VQ dir; GenHancer:
                      stage 1's; stage 2 takes stage 1's output)        (default: the preset's)
  --data SPEC         training images: folder, .jsonl list, .tar shards / brace pattern
  --zoo DIR           tiny-zoo directory (resolves zoo: paths of the toy presets)
  --gpus N            processes on this node (default 1; >1 uses torchrun or deepspeed)
  --hostfile FILE     multi-node: DeepSpeed hostfile, passed to the deepspeed launcher
  --launcher L        torchrun | deepspeed (default torchrun; a hostfile implies deepspeed)
  --deepspeed Z       zero2 | zero3 | path to a DeepSpeed JSON (default: the preset's)
  --max-steps N       optimizer steps (of every stage)
  --set KEY=VALUE     any config override, repeatable (e.g. --set optim.lr=1e-5)
  -h, --help          this help
USAGE
}

preset="paper" gpus=1 hostfile="" launcher="torchrun" output="" args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --method|--backbone|--vision-tower|--generator|--data|--zoo|--deepspeed|--max-steps|--set)
      need_value "$1" $#; args+=("$1" "$2"); shift 2 ;;
    --output) need_value "$1" $#; output="$2"; args+=("$1" "$2"); shift 2 ;;
    --preset) need_value "$1" $#; preset="$2"; shift 2 ;;
    --gpus) need_value "$1" $#; gpus="$2"; shift 2 ;;
    --hostfile) need_value "$1" $#; hostfile="$2"; shift 2 ;;
    --launcher) need_value "$1" $#; launcher="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown flag: $1" ;;
  esac
done
[[ -n "$output" ]] || die "--output is required"
[[ "$gpus" =~ ^[0-9]+$ && "$gpus" -ge 1 ]] || die "--gpus must be a positive integer, got '$gpus'"
[[ "$launcher" == torchrun || "$launcher" == deepspeed ]] || die "--launcher must be torchrun or deepspeed"
[[ -z "$hostfile" ]] || require_path "hostfile" "$hostfile"
args=(--preset "$preset" "${args[@]}")

# Resolve and check the whole run (method, preset, stages, input paths) before any process starts.
"$GF_PY" -m enhance train "${args[@]}" --check >/dev/null || exit $?
launch "$gpus" "$hostfile" "$launcher" enhance train "${args[@]}"
[[ -f "$output/vision_tower/config.json" ]] || die "training finished but $output/vision_tower was not written"
log "enhanced tower: $output/vision_tower"
