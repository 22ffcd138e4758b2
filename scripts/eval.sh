#!/usr/bin/env bash
# Score a tower and/or a LLaVA checkpoint on the benchmarks that measure fine visual detail:
# MMVP-VLM and zero-shot (encoder), MMVP, CV-Bench and general VQA via lmms-eval (LLaVA).
# Each benchmark writes OUTPUT/<benchmark>/{predictions.jsonl,metrics.json}.
set -euo pipefail
source "$(dirname "$0")/_common.sh"

usage() {
  cat <<'USAGE'
Usage: bash scripts/eval.sh --output DIR [--vision-tower SPEC] [--model DIR] [data flags]

  --output DIR          results root: DIR/<benchmark>/{predictions.jsonl,metrics.json}  (required)
  --vision-tower SPEC   tower for the encoder benchmarks (mmvp-vlm, zeroshot)
  --model DIR           LLaVA checkpoint (HF Llava dir or original LLaVA-1.5 dir) for mmvp,
                        cv-bench, vqa
  --benchmarks LIST     comma-separated registered benchmarks (python -m eval benchmarks --names)
                        (default: every benchmark whose data and model/tower are given)
  --preset P            toy: take every data path below from --zoo                  (default: none)
  --zoo DIR             tiny-zoo directory (with --preset toy)
  --mmvp-vlm-data DIR   MMVP-VLM root (Questions.csv + "MLLM_VLM Images/")
  --zeroshot-data DIR   class-per-folder dataset (<class>/<image>)
  --mmvp-data DIR       MMVP root (Questions.csv + "MMVP Images/")
  --cv-bench-data DIR   CV-Bench root (test_2d.parquet, test_3d.parquet, or jsonl + img/)
  --vqa-data-root DIR   root of local lmms-eval dataset copies (see eval/lmms/tasks.py)
  --vqa-tasks LIST      lmms-eval tasks, e.g. gqa,pope,scienceqa_img,textvqa_val,mme
  --batch-size N        batch size for every benchmark (default: each benchmark's own)
  --device D            cpu | cuda (default cpu)
  --gpus N              accepted for symmetry with the other scripts; evaluation runs as one process
  -h, --help            this help
USAGE
}

output="" tower="" model="" benchmarks="" preset="" zoo="" mmvp_vlm="" zeroshot="" mmvp="" cv_bench=""
vqa_root="" vqa_tasks="" batch="" device=cpu
while [[ $# -gt 0 ]]; do
  case "$1" in
    --output) need_value "$1" $#; output="$2"; shift 2 ;;
    --vision-tower) need_value "$1" $#; tower="$2"; shift 2 ;;
    --model) need_value "$1" $#; model="$2"; shift 2 ;;
    --benchmarks) need_value "$1" $#; benchmarks="$2"; shift 2 ;;
    --preset) need_value "$1" $#; preset="$2"; shift 2 ;;
    --zoo) need_value "$1" $#; zoo="$2"; shift 2 ;;
    --mmvp-vlm-data) need_value "$1" $#; mmvp_vlm="$2"; shift 2 ;;
    --zeroshot-data) need_value "$1" $#; zeroshot="$2"; shift 2 ;;
    --mmvp-data) need_value "$1" $#; mmvp="$2"; shift 2 ;;
    --cv-bench-data) need_value "$1" $#; cv_bench="$2"; shift 2 ;;
    --vqa-data-root) need_value "$1" $#; vqa_root="$2"; shift 2 ;;
    --vqa-tasks) need_value "$1" $#; vqa_tasks="$2"; shift 2 ;;
    --batch-size) need_value "$1" $#; batch="$2"; shift 2 ;;
    --device) need_value "$1" $#; device="$2"; shift 2 ;;
    --gpus) need_value "$1" $#; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown flag: $1" ;;
  esac
done

[[ -n "$output" ]] || die "--output is required"
[[ -n "$tower" || -n "$model" ]] || die "give --vision-tower and/or --model"
if [[ "$preset" == toy ]]; then
  [[ -n "$zoo" ]] || die "--preset toy needs --zoo DIR"
  require_path "tiny zoo (--zoo)" "$zoo/zoo.json"
  d="$zoo/data"
  mmvp_vlm="${mmvp_vlm:-$d/mmvp_vlm}"; zeroshot="${zeroshot:-$d/zeroshot}"; mmvp="${mmvp:-$d/mmvp}"
  cv_bench="${cv_bench:-$d/cv_bench}"; vqa_root="${vqa_root:-$d}"; vqa_tasks="${vqa_tasks:-shapes_vqa,shapes_mc}"
elif [[ -n "$preset" ]]; then
  die "unknown --preset '$preset' (only toy; paper runs pass the data flags)"
fi
if [[ -z "$benchmarks" ]]; then  # everything that has both its data and its model
  list=()
  [[ -n "$tower" && -n "$mmvp_vlm" ]] && list+=(mmvp-vlm)
  [[ -n "$tower" && -n "$zeroshot" ]] && list+=(zeroshot)
  [[ -n "$model" && -n "$mmvp" ]] && list+=(mmvp)
  [[ -n "$model" && -n "$cv_bench" ]] && list+=(cv-bench)
  [[ -n "$model" && -n "$vqa_root" && -n "$vqa_tasks" ]] && list+=(vqa)
  benchmarks=$(IFS=,; echo "${list[*]:-}")
  [[ -n "$benchmarks" ]] || die "nothing to run: give a model/tower together with benchmark data flags"
fi
IFS=, read -r -a todo <<<"$benchmarks"
# Check every input before the first benchmark starts; the benchmark names come from eval's registry.
known=$("$GF_PY" -m eval benchmarks --names) || die "cannot list the benchmarks: $GF_PY -m eval benchmarks --names failed"
for b in "${todo[@]}"; do
  grep -qxF -- "$b" <<<"$known" || die "unknown benchmark '$b' (known: $(paste -sd, - <<<"$known"))"
  case "$b" in
    mmvp-vlm) [[ -n "$tower" ]] || die "mmvp-vlm needs --vision-tower"; require_path "MMVP-VLM data" "$mmvp_vlm" ;;
    zeroshot) [[ -n "$tower" ]] || die "zeroshot needs --vision-tower"; require_path "zero-shot data" "$zeroshot" ;;
    mmvp) [[ -n "$model" ]] || die "mmvp needs --model"; require_path "MMVP data" "$mmvp" ;;
    cv-bench) [[ -n "$model" ]] || die "cv-bench needs --model"; require_path "CV-Bench data" "$cv_bench" ;;
    vqa) [[ -n "$model" && -n "$vqa_tasks" ]] || die "vqa needs --model and --vqa-tasks"
         require_path "VQA data root" "$vqa_root" ;;
    *) die "benchmark '$b' has no data flag in scripts/eval.sh; run $GF_PY -m eval $b directly" ;;
  esac
done
if [[ -n "$model" ]]; then require_path "LLaVA checkpoint (--model)" "$model/config.json"; fi

extra=(--device "$device")
[[ -n "$batch" ]] && extra+=(--batch-size "$batch")
for b in "${todo[@]}"; do
  out="$output/$b"
  log "benchmark $b -> $out"
  case "$b" in
    mmvp-vlm) "$GF_PY" -m eval mmvp-vlm --vision-tower "$tower" --data "$mmvp_vlm" --output "$out" "${extra[@]}" ;;
    zeroshot) "$GF_PY" -m eval zeroshot --vision-tower "$tower" --data "$zeroshot" --output "$out" "${extra[@]}" ;;
    mmvp) "$GF_PY" -m eval mmvp --model "$model" --data "$mmvp" --output "$out" "${extra[@]}" ;;
    cv-bench) "$GF_PY" -m eval cv-bench --model "$model" --data "$cv_bench" --output "$out" "${extra[@]}" ;;
    vqa) "$GF_PY" -m eval vqa --model "$model" --tasks "$vqa_tasks" --data-root "$vqa_root" --output "$out" \
           "${extra[@]}" ;;
  esac
  if [[ "$b" == vqa ]]; then  # one results directory per lmms-eval task
    IFS=, read -r -a tasks <<<"$vqa_tasks"
    for t in "${tasks[@]}"; do require_path "vqa metrics of $t" "$out/$t/metrics.json"; done
  else
    require_path "$b metrics" "$out/metrics.json"
  fi
done
log "results in $output"
