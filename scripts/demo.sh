#!/usr/bin/env bash
# The demo: erase the colour red from the built-in shapes model (models/shapes) with UCE, then RECE;
# generate the world's evaluation prompts with the base, UCE and RECE models; attack each with
# Ring-A-Bell embeddings ("a red circle" - "a circle"); print and save the table and image grids.
# Runs on a CPU in a few minutes. Override with OUT=... CONCEPT=... ETA=... STEPS=...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
CONCEPT=${CONCEPT:-red}
PRESERVE=${PRESERVE:-yellow,green,blue,purple}   # the other colours, kept by the edits
ETA=${ETA:-0.5}
STEPS=${STEPS:-25}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rm -rf "$OUT" && mkdir -p "$OUT"

# 1. prompts: evaluation (every colour x shape), attacked prompts, Ring-A-Bell pairs
python execs/shapes_data.py --concept "$CONCEPT" --save_path "$OUT/data"
# 2. erasure: UCE (the concept towards ' ', preserving the other colours), then RECE from it. No
#    --add_prompts: the authors map each template ("a red circle") to the bare guide ' ', which would
#    erase the shapes along with the colour (docs/tables.md)
python execs/train_uce.py --concepts "$CONCEPT" --concept_type colour --preserve_concepts "$PRESERVE" --model_id shapes --save_path "$OUT/uce"
python train.py --concepts "$CONCEPT" --concept_type colour --preserve_concepts "$PRESERVE" --target_ckpt "$OUT/uce/uce.safetensors" --model_id shapes --ddim_steps "$STEPS" --save_path "$OUT/rece"
# 3. generation of the evaluation prompts: base, UCE, RECE
python execs/generate_images.py --prompts_path "$OUT/data/eval_prompts.csv" --model_id shapes --ddim_steps "$STEPS" --batch_size 25 --save_path "$OUT/gen-sd"
python execs/generate_images.py --prompts_path "$OUT/data/eval_prompts.csv" --model_id shapes --ddim_steps "$STEPS" --batch_size 25 --ckpt "$OUT/uce/uce.safetensors" --save_path "$OUT/gen-uce"
python execs/generate_images.py --prompts_path "$OUT/data/eval_prompts.csv" --model_id shapes --ddim_steps "$STEPS" --batch_size 25 --ckpt "$OUT/rece/best.safetensors" --save_path "$OUT/gen-rece"
# 4. Ring-A-Bell on the prompts that ask for the concept
python attack_methods/RingABell.py --csv_file "$OUT/data/ringabell_pairs.csv" --prompt_file "$OUT/data/attack_prompts.csv" --concept "$CONCEPT" --eta "$ETA" --model_id shapes --ddim_steps "$STEPS" --batch_size 20 --img_path "$OUT/attack-sd"
python attack_methods/RingABell.py --csv_file "$OUT/data/ringabell_pairs.csv" --prompt_file "$OUT/data/attack_prompts.csv" --concept "$CONCEPT" --eta "$ETA" --model_id shapes --ddim_steps "$STEPS" --batch_size 20 --ckpt "$OUT/uce/uce.safetensors" --img_path "$OUT/attack-uce"
python attack_methods/RingABell.py --csv_file "$OUT/data/ringabell_pairs.csv" --prompt_file "$OUT/data/attack_prompts.csv" --concept "$CONCEPT" --eta "$ETA" --model_id shapes --ddim_steps "$STEPS" --batch_size 20 --ckpt "$OUT/rece/best.safetensors" --img_path "$OUT/attack-rece"
# 5. the table (and grids: $OUT/gen-*/grid.png, $OUT/attack-*/grid.png)
python execs/shapes_table.py --concept "$CONCEPT" --runs SD="$OUT/gen-sd" UCE="$OUT/gen-uce" RECE="$OUT/gen-rece" --attacks SD="$OUT/attack-sd" UCE="$OUT/attack-uce" RECE="$OUT/attack-rece" --out "$OUT/table"
