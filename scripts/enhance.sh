#!/usr/bin/env bash
# Post-train a vision tower with generative feedback (DIVA, un2CLIP, GenHancer continuous/discrete).
# GenHancer runs its two stages in sequence (stage-1 generator -> stage-2 LoRA on the tower).
set -euo pipefail
source "$(dirname "$0")/_common.sh"

usage() {
  cat <<'USAGE'
Usage: bash scripts/enhance.sh --method M --output DIR [options]

  --method M          diva | un2clip | genhancer | genhancer-discrete            (required)
  --output DIR        run directory; the enhanced tower lands in DIR/vision_tower  (required)
  --preset P          toy | paper | a preset name or YAML path                    (default: paper)
                        toy:   the tiny-<method> preset on the tiny zoo (needs --zoo)
                        paper: the paper recipe <method>-<backbone> (GenHancer: -stage1/-stage2)
  --backbone B        paper backbone: openai-l14-224 | openai-l14-336 | openclip-h14-224 |
                      siglip-so14-384 (un2CLIP has all four; DIVA the OpenAI two;
                      GenHancer openai-l14-224/336 and siglip-so14-384)  (default: openai-l14-224)
  --vision-tower SPEC tower to start from (default: the preset's)
  --generator PATH    frozen generator: SD-2.1 dir (diva, genhancer VAE), Stable unCLIP dir
                      (un2clip), VQ model dir (genhancer-discrete)          (default: the preset's)
  --data SPEC         training images: folder, .jsonl list, .tar shards / brace pattern
  --zoo DIR           tiny-zoo directory (resolves zoo: paths of the toy presets)
  --gpus N            processes on this node (default 1; >1 uses torchrun or deepspeed)
  --hostfile FILE     multi-node: DeepSpeed hostfile, passed to the deepspeed launcher
  --launcher L        torchrun | deepspeed (default torchrun; a hostfile implies deepspeed)
  --deepspeed Z       zero2 | zero3 | path to a DeepSpeed JSON (default: the preset's)
  --max-steps N       optimizer steps (GenHancer: each stage)
  --set KEY=VALUE     any config override, repeatable (e.g. --set optim.lr=1e-5)
  -h, --help          this help
USAGE
}

method="" output="" preset="paper" backbone="openai-l14-224" tower="" generator="" data="" zoo=""
gpus=1 hostfile="" launcher="torchrun" deepspeed="" max_steps="" sets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --method) need_value "$1" $#; method="$2"; shift 2 ;;
    --output) need_value "$1" $#; output="$2"; shift 2 ;;
    --preset) need_value "$1" $#; preset="$2"; shift 2 ;;
    --backbone) need_value "$1" $#; backbone="$2"; shift 2 ;;
    --vision-tower) need_value "$1" $#; tower="$2"; shift 2 ;;
    --generator) need_value "$1" $#; generator="$2"; shift 2 ;;
    --data) need_value "$1" $#; data="$2"; shift 2 ;;
    --zoo) need_value "$1" $#; zoo="$2"; shift 2 ;;
    --gpus) need_value "$1" $#; gpus="$2"; shift 2 ;;
    --hostfile) need_value "$1" $#; hostfile="$2"; shift 2 ;;
    --launcher) need_value "$1" $#; launcher="$2"; shift 2 ;;
    --deepspeed) need_value "$1" $#; deepspeed="$2"; shift 2 ;;
    --max-steps) need_value "$1" $#; max_steps="$2"; shift 2 ;;
    --set) need_value "$1" $#; sets+=(--set "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown flag: $1" ;;
  esac
done

[[ -n "$method" ]] || die "--method is required (diva | un2clip | genhancer | genhancer-discrete)"
[[ -n "$output" ]] || die "--output is required"
case "$method" in diva|un2clip|genhancer|genhancer-discrete) ;; *) die "unknown --method '$method'" ;; esac
[[ "$gpus" =~ ^[0-9]+$ && "$gpus" -ge 1 ]] || die "--gpus must be a positive integer, got '$gpus'"
[[ "$launcher" == torchrun || "$launcher" == deepspeed ]] || die "--launcher must be torchrun or deepspeed"
[[ -z "$hostfile" ]] || require_path "hostfile" "$hostfile"
[[ -z "$data" ]] || [[ "$data" == *"{"* ]] || require_path "training data (--data)" "$data"
[[ -z "$generator" ]] || require_path "generator (--generator)" "$generator"
[[ -z "$max_steps" || "$max_steps" =~ ^[0-9]+$ ]] || die "--max-steps must be an integer"

two_stage=false
[[ "$method" == genhancer* ]] && two_stage=true
preset_for_stage() {  # preset_for_stage STAGE -> preset name
  local stage="$1"
  case "$preset" in
    toy) echo "tiny-$method" ;;
    paper) if $two_stage; then echo "$method-$backbone-stage$stage"; else echo "$method-$backbone"; fi ;;
    *) echo "$preset" ;;
  esac
}
if [[ "$preset" == toy ]]; then
  [[ -n "$zoo" ]] || die "--preset toy needs --zoo DIR (build one with: python -m llava_plugin.toy --out DIR)"
  require_path "tiny zoo (--zoo)" "$zoo/zoo.json"
fi
# Ask the CLI whether the presets exist before anything starts.
known_presets="$("$GF_PY" -m enhance presets 2>/dev/null)" || die "python -m enhance presets failed: is the environment set up? (bash scripts/setup.sh)"
for stage in 1 2; do
  name="$(preset_for_stage "$stage")"
  if [[ "$name" != *.yaml ]] && ! grep -qw -- "$name" <<<"$known_presets"; then
    die "no preset '$name' (method $method, backbone $backbone); list them with: python -m enhance presets"
  fi
  $two_stage || break
done

common=(--method "$method")
[[ -n "$zoo" ]] && common+=(--zoo "$zoo")
[[ -n "$data" ]] && common+=(--data "$data")
[[ -n "$deepspeed" ]] && common+=(--deepspeed "$deepspeed")
[[ -n "$max_steps" ]] && common+=(--max-steps "$max_steps")

mkdir -p "$output"
if $two_stage; then
  stage1=(--preset "$(preset_for_stage 1)" --output "$output/stage1" "${common[@]}" --set method.stage=1)
  [[ -n "$tower" ]] && stage1+=(--vision-tower "$tower")
  [[ -n "$generator" ]] && stage1+=(--generator "$generator")
  log "GenHancer stage 1: light denoiser + condition MLPs on the frozen tower"
  launch "$gpus" "$hostfile" "$launcher" enhance train "${stage1[@]}" "${sets[@]}"
  stage2=(--preset "$(preset_for_stage 2)" --output "$output" "${common[@]}" --set method.stage=2
          --generator "$output/stage1/generator")
  [[ -n "$tower" ]] && stage2+=(--vision-tower "$tower")
  [[ "$preset" == toy ]] && stage2+=(--set optim.lr=1e-3)
  log "GenHancer stage 2: LoRA on the tower, frozen stage-1 generator"
  launch "$gpus" "$hostfile" "$launcher" enhance train "${stage2[@]}" "${sets[@]}"
else
  args=(--preset "$(preset_for_stage 1)" --output "$output" "${common[@]}")
  [[ -n "$tower" ]] && args+=(--vision-tower "$tower")
  [[ -n "$generator" ]] && args+=(--generator "$generator")
  launch "$gpus" "$hostfile" "$launcher" enhance train "${args[@]}" "${sets[@]}"
fi
[[ -f "$output/vision_tower/config.json" ]] || die "training finished but $output/vision_tower was not written"
log "enhanced tower: $output/vision_tower"
