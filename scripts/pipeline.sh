#!/usr/bin/env bash
# The whole chain, encoder first: enhance the tower with each method -> train LLaVA-1.5 on the
# base tower and on every enhanced tower (same recipe, tower swapped by flag) -> evaluate all ->
# comparison table + plot. With no arguments: the toy preset on the tiny offline zoo (CPU).
# --preset world runs the shapes-world study instead (python -m world study): trained world models,
# every method against its matched controls, over seeds, and report/world.md.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
HERE="$(cd "$(dirname "$0")" && pwd)"

usage() {
  cat <<'USAGE'
Usage: bash scripts/pipeline.sh [options]

  --preset P            toy | paper | world                                          (default toy)
  --output DIR          run root: zoo/, enhance/<method>/, llava/<tower>/, eval/<tower>/, report/
                                                                        (default runs/<preset>-pipeline)
  --methods LIST        comma-separated subset of diva,un2clip,genhancer,genhancer-discrete
                                                                        (default: all four)
  --enhance-steps N     optimizer steps per enhancement (stage)   (default: toy 30, paper: the preset's)
  --llava-steps N       optimizer steps per LLaVA stage            (default: toy 200, paper: full epoch)
  --gpus N              processes per stage on this node (default 1)
  --hostfile FILE       multi-node DeepSpeed hostfile (passed to the launcher)
  --launcher L          torchrun | deepspeed (default torchrun)
  --no-setup            do not run scripts/setup.sh first
 world preset only (its recipe is world/configs/study.yaml):
  --seeds N             seeds 0..N-1 of the whole study (world models, enhance, LLaVA)   (default 1)
  --jobs N              jobs run side by side, one CPU thread each                       (default 2)
 paper preset only (toy takes everything from the tiny zoo it builds):
  --vision-tower SPEC   base tower (default openai/clip-vit-large-patch14)
  --backbone B          preset backbone name for enhance (default openai-l14-224)
  --llm DIR             LLaVA language model (e.g. a local lmsys/vicuna-7b-v1.5)
  --enhance-data SPEC   images for enhancement (e.g. CC3M shards: /data/cc3m/{00000..00331}.tar)
  --sd DIR              Stable Diffusion 2.1-base dir (DIVA; GenHancer's VAE)
  --unclip DIR          Stable unCLIP 2.1 dir whose image encoder matches the tower (un2CLIP)
  --vq DIR              VQ tokenizer dir (GenHancer discrete)
  --pretrain-data JSON --pretrain-images DIR --finetune-data JSON --finetune-images DIR
  --mmvp-vlm-data DIR --zeroshot-data DIR --mmvp-data DIR --cv-bench-data DIR
  --vqa-data-root DIR --vqa-tasks LIST
  -h, --help            this help
USAGE
}

preset=toy output="" methods="diva,un2clip,genhancer,genhancer-discrete" enhance_steps="" llava_steps=""
gpus=1 hostfile="" launcher=torchrun setup=true seeds="" jobs=2 tower="openai/clip-vit-large-patch14" backbone="openai-l14-224"
llm="" enhance_data="" sd="" unclip="" vq="" pre_data="" pre_images="" ft_data="" ft_images=""
eval_flags=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) need_value "$1" $#; preset="$2"; shift 2 ;;
    --output) need_value "$1" $#; output="$2"; shift 2 ;;
    --methods) need_value "$1" $#; methods="$2"; shift 2 ;;
    --enhance-steps) need_value "$1" $#; enhance_steps="$2"; shift 2 ;;
    --llava-steps) need_value "$1" $#; llava_steps="$2"; shift 2 ;;
    --gpus) need_value "$1" $#; gpus="$2"; shift 2 ;;
    --hostfile) need_value "$1" $#; hostfile="$2"; shift 2 ;;
    --launcher) need_value "$1" $#; launcher="$2"; shift 2 ;;
    --no-setup) setup=false; shift ;;
    --seeds) need_value "$1" $#; seeds="$2"; shift 2 ;;
    --jobs) need_value "$1" $#; jobs="$2"; shift 2 ;;
    --vision-tower) need_value "$1" $#; tower="$2"; shift 2 ;;
    --backbone) need_value "$1" $#; backbone="$2"; shift 2 ;;
    --llm) need_value "$1" $#; llm="$2"; shift 2 ;;
    --enhance-data) need_value "$1" $#; enhance_data="$2"; shift 2 ;;
    --sd) need_value "$1" $#; sd="$2"; shift 2 ;;
    --unclip) need_value "$1" $#; unclip="$2"; shift 2 ;;
    --vq) need_value "$1" $#; vq="$2"; shift 2 ;;
    --pretrain-data) need_value "$1" $#; pre_data="$2"; shift 2 ;;
    --pretrain-images) need_value "$1" $#; pre_images="$2"; shift 2 ;;
    --finetune-data) need_value "$1" $#; ft_data="$2"; shift 2 ;;
    --finetune-images) need_value "$1" $#; ft_images="$2"; shift 2 ;;
    --mmvp-vlm-data|--zeroshot-data|--mmvp-data|--cv-bench-data|--vqa-data-root|--vqa-tasks)
      need_value "$1" $#; eval_flags+=("$1" "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown flag: $1" ;;
  esac
done

case "$preset" in toy|paper|world) ;; *) die "unknown --preset '$preset' (toy | paper | world)" ;; esac
if [[ "$preset" == world ]]; then
  $setup && bash "$HERE/setup.sh"
  source "$HERE/_common.sh"  # picks up the venv setup.sh may just have created
  study=(--out "${output:-runs/world}" --jobs "$jobs")
  [[ -n "$seeds" ]] && study+=(--seeds "$seeds")
  log "$GF_PY -m world study ${study[*]}"
  exec "$GF_PY" -m world study "${study[@]}"
fi
output="${output:-runs/$preset-pipeline}"
IFS=, read -r -a method_list <<<"$methods"
for m in "${method_list[@]}"; do
  case "$m" in diva|un2clip|genhancer|genhancer-discrete) ;; *) die "unknown method '$m' in --methods" ;; esac
done
for n in "$enhance_steps" "$llava_steps" "$gpus"; do
  [[ -z "$n" || "$n" =~ ^[0-9]+$ ]] || die "step and GPU counts must be integers, got '$n'"
done
generator_for() {  # generator_for METHOD -> path (paper preset)
  case "$1" in diva|genhancer) echo "$sd" ;; un2clip) echo "$unclip" ;; genhancer-discrete) echo "$vq" ;; esac
}
if [[ "$preset" == paper ]]; then
  # Check every input up front: a missing path should not surface hours into a run.
  [[ -n "$llm" ]] || die "--preset paper needs --llm"
  [[ -n "$enhance_data" ]] || die "--preset paper needs --enhance-data"
  for m in "${method_list[@]}"; do
    g="$(generator_for "$m")"
    [[ -n "$g" ]] || die "method $m needs its generator (--sd for diva/genhancer, --unclip, --vq)"
    require_path "generator for $m" "$g"
  done
  for pair in "pretraining data:$pre_data" "pretraining images:$pre_images" "finetuning data:$ft_data" \
              "finetuning images:$ft_images"; do
    [[ -n "${pair#*:}" ]] || die "--preset paper needs the LLaVA data flags (${pair%%:*} missing)"
    require_path "${pair%%:*}" "${pair#*:}"
  done
  [[ "$enhance_data" == *"{"* ]] || require_path "enhancement data" "$enhance_data"
fi

start=$(date +%s)
$setup && bash "$HERE/setup.sh"
source "$HERE/_common.sh"  # picks up the venv setup.sh may just have created
mkdir -p "$output"
output="$(cd "$output" && pwd)"

stage_flags=(--gpus "$gpus" --launcher "$launcher")
[[ -n "$hostfile" ]] && stage_flags+=(--hostfile "$hostfile")

if [[ "$preset" == toy ]]; then
  zoo="$output/zoo"
  if [[ ! -f "$zoo/zoo.json" ]]; then
    log "building the tiny offline zoo in $zoo"
    "$GF_PY" -m llava_plugin.toy --out "$zoo" >/dev/null
  fi
  zoo_get() {  # zoo_get data.llava_pretrain -> the path zoo.json records for it
    "$GF_PY" - "$zoo/zoo.json" "$1" <<'PY'
import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value[key]
print(value)
PY
  }
  tower="$(zoo_get clip)"; llm="$(zoo_get llm)"
  pre_data="$(zoo_get data.llava_pretrain)"; pre_images="$(zoo_get data.llava_pretrain_images)"
  ft_data="$(zoo_get data.llava_finetune)"; ft_images="$(zoo_get data.llava_image_folder)"
  enhance_steps="${enhance_steps:-30}"; llava_steps="${llava_steps:-200}"
  enhance_flags=(--preset toy --zoo "$zoo")
  llava_flags=(--preset toy)
  eval_flags+=(--preset toy --zoo "$zoo")
else
  enhance_flags=(--preset paper --backbone "$backbone" --vision-tower "$tower" --data "$enhance_data")
  llava_flags=(--preset paper-7b)
fi
[[ -n "$enhance_steps" ]] && enhance_flags+=(--max-steps "$enhance_steps")
[[ -n "$llava_steps" ]] && llava_flags+=(--max-steps "$llava_steps")

# 1. enhance the tower with every method
towers=("base=$tower")
for m in "${method_list[@]}"; do
  run="$output/enhance/$m"
  if [[ -f "$run/vision_tower/genfeedback.json" ]]; then
    log "enhance/$m exists, reusing it"
  else
    flags=("${enhance_flags[@]}")
    [[ "$preset" == paper ]] && flags+=(--generator "$(generator_for "$m")")
    bash "$HERE/enhance.sh" --method "$m" --output "$run" "${flags[@]}" "${stage_flags[@]}"
  fi
  towers+=("$m=$run/vision_tower")
done

# 2. LLaVA-1.5 on each tower (recipe unchanged; only --vision-tower differs), then 3. evaluate it
eval_runs=()
for entry in "${towers[@]}"; do
  name="${entry%%=*}" spec="${entry#*=}"
  llava="$output/llava/$name"
  if [[ -f "$llava/finetune/llava/genfeedback.json" ]]; then  # genfeedback.json is written last, and the export is renamed into place when complete
    log "llava/$name exists, reusing it"
  else
    bash "$HERE/train_llava.sh" --vision-tower "$spec" --llm "$llm" --output "$llava" \
      --pretrain-data "$pre_data" --pretrain-images "$pre_images" \
      --finetune-data "$ft_data" --finetune-images "$ft_images" "${llava_flags[@]}" "${stage_flags[@]}"
  fi
  bash "$HERE/eval.sh" --vision-tower "$spec" --model "$llava/finetune/llava" --output "$output/eval/$name" \
    "${eval_flags[@]}"
  eval_runs+=("$output/eval/$name")
done

# 4. one table and one plot; deltas are against the base tower (the first run)
"$GF_PY" -m eval compare "${eval_runs[@]}" --output "$output/report"
log "pipeline finished in $(( $(date +%s) - start ))s: table $output/report/compare.md, plot $output/report/compare.png"
