#!/usr/bin/env bash
# LLaVA-1.5 with any vision tower: pretraining (projector only) then instruction tuning
# (LLM + projector). The recipe is the preset's; only --vision-tower changes between towers.
set -euo pipefail
source "$(dirname "$0")/_common.sh"

usage() {
  cat <<'USAGE'
Usage: bash scripts/train_llava.sh --vision-tower SPEC --llm DIR --output DIR [options]

  --vision-tower SPEC   the tower: HF id/dir (CLIP, SigLIP), open_clip:..., or an enhance output
                        (RUN/vision_tower)                                            (required)
  --llm DIR             the language model (e.g. a local lmsys/vicuna-7b-v1.5)         (required)
  --output DIR          run directory: DIR/pretrain (mm_projector.bin) and DIR/finetune
                        (the HF Llava checkpoint in DIR/finetune/llava)                (required)
  --preset P            toy | paper-7b | paper-13b                                 (default paper-7b)
  --pretrain-data JSON  LCS-558K-style JSON (blip_laion_cc_sbu_558k.json)           (required)
  --pretrain-images DIR its image folder                                             (required)
  --finetune-data JSON  mix665k-style JSON (llava_v1_5_mix665k.json)                 (required)
  --finetune-images DIR the folder its image paths are relative to                    (required)
  --lora                instruction-tune with LoRA (r128, alpha256) instead of full finetuning
  --stage S             both | pretrain | finetune (finetune reuses DIR/pretrain)    (default both)
  --gpus N              processes on this node (default 1; >1 uses torchrun or deepspeed)
  --hostfile FILE       multi-node: DeepSpeed hostfile, passed to the deepspeed launcher
  --launcher L          torchrun | deepspeed (default torchrun; a hostfile implies deepspeed)
  --max-steps N         cap optimizer steps per stage (smoke runs)
  --skip-bad-samples    drop and count malformed samples instead of failing
  --set KEY=VALUE       config override for both stages, repeatable
  -h, --help            this help
USAGE
}

tower="" llm="" output="" preset="paper-7b" pre_data="" pre_images="" ft_data="" ft_images="" lora=false
stage=both gpus=1 hostfile="" launcher=torchrun max_steps="" skip_bad=false sets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vision-tower) need_value "$1" $#; tower="$2"; shift 2 ;;
    --llm) need_value "$1" $#; llm="$2"; shift 2 ;;
    --output) need_value "$1" $#; output="$2"; shift 2 ;;
    --preset) need_value "$1" $#; preset="$2"; shift 2 ;;
    --pretrain-data) need_value "$1" $#; pre_data="$2"; shift 2 ;;
    --pretrain-images) need_value "$1" $#; pre_images="$2"; shift 2 ;;
    --finetune-data) need_value "$1" $#; ft_data="$2"; shift 2 ;;
    --finetune-images) need_value "$1" $#; ft_images="$2"; shift 2 ;;
    --lora) lora=true; shift ;;
    --stage) need_value "$1" $#; stage="$2"; shift 2 ;;
    --gpus) need_value "$1" $#; gpus="$2"; shift 2 ;;
    --hostfile) need_value "$1" $#; hostfile="$2"; shift 2 ;;
    --launcher) need_value "$1" $#; launcher="$2"; shift 2 ;;
    --max-steps) need_value "$1" $#; max_steps="$2"; shift 2 ;;
    --skip-bad-samples) skip_bad=true; shift ;;
    --set) need_value "$1" $#; sets+=(--set "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown flag: $1" ;;
  esac
done

[[ -n "$tower" ]] || die "--vision-tower is required"
[[ -n "$llm" ]] || die "--llm is required"
[[ -n "$output" ]] || die "--output is required"
case "$preset" in
  toy) pre_preset=tiny-pretrain; ft_preset=tiny-finetune ;;
  paper-7b) pre_preset=llava15-7b-pretrain; ft_preset=llava15-7b-finetune ;;
  paper-13b) pre_preset=llava15-13b-pretrain; ft_preset=llava15-13b-finetune ;;
  *) die "unknown --preset '$preset' (toy | paper-7b | paper-13b)" ;;
esac
$lora && ft_preset="$ft_preset-lora"
case "$stage" in both|pretrain|finetune) ;; *) die "--stage must be both, pretrain or finetune" ;; esac
[[ "$gpus" =~ ^[0-9]+$ && "$gpus" -ge 1 ]] || die "--gpus must be a positive integer, got '$gpus'"
[[ "$launcher" == torchrun || "$launcher" == deepspeed ]] || die "--launcher must be torchrun or deepspeed"
[[ -z "$hostfile" ]] || require_path "hostfile" "$hostfile"
[[ -z "$max_steps" || "$max_steps" =~ ^[0-9]+$ ]] || die "--max-steps must be an integer"
# A local tower/LLM must exist; anything else must be an HF id already in the local cache.
if [[ ( "$tower" == /* || "$tower" == ./* ) && ! -e "$tower" ]]; then die "vision tower not found: $tower"; fi
if [[ ( "$llm" == /* || "$llm" == ./* ) && ! -e "$llm" ]]; then die "LLM not found: $llm"; fi
if [[ "$stage" != finetune ]]; then
  [[ -n "$pre_data" && -n "$pre_images" ]] || die "--pretrain-data and --pretrain-images are required"
  require_path "pretraining data" "$pre_data"; require_path "pretraining images" "$pre_images"
fi
if [[ "$stage" != pretrain ]]; then
  [[ -n "$ft_data" && -n "$ft_images" ]] || die "--finetune-data and --finetune-images are required"
  require_path "finetuning data" "$ft_data"; require_path "finetuning images" "$ft_images"
fi

common=(--vision-tower "$tower" --llm "$llm")
[[ -n "$max_steps" ]] && common+=(--max-steps "$max_steps")
$skip_bad && common+=(--skip-bad-samples)
mkdir -p "$output"
if [[ "$stage" != finetune ]]; then
  log "LLaVA pretraining ($pre_preset): projector only"
  launch "$gpus" "$hostfile" "$launcher" mllm_train pretrain --preset "$pre_preset" "${common[@]}" \
    --data "$pre_data" --image-folder "$pre_images" --output "$output/pretrain" "${sets[@]}"
fi
projector="$output/pretrain/mm_projector.bin"
require_path "pretrained projector (run --stage pretrain first)" "$projector"
if [[ "$stage" != pretrain ]]; then
  log "LLaVA instruction tuning ($ft_preset): LLM + projector, tower frozen"
  launch "$gpus" "$hostfile" "$launcher" mllm_train finetune --preset "$ft_preset" "${common[@]}" \
    --pretrained-projector "$projector" --data "$ft_data" --image-folder "$ft_images" \
    --output "$output/finetune" "${sets[@]}"
  require_path "exported LLaVA checkpoint" "$output/finetune/llava/config.json"
  log "LLaVA checkpoint: $output/finetune/llava"
fi
