#!/usr/bin/env bash
# Paper Table 3 (artistic styles): erase one artist with UCE (the 1,733 others preserved), then
# RECE (1 epoch, gamma 1e-3); generate the artist prompts; LPIPS against SD, CLIP style classification.
# Budget: MODEL, DEVICE, DATA (prompt CSVs) and STEPS default to the paper's; tests/test_scripts.py runs
# this script on a tiny random pipeline with DATA=<a few rows of each CSV> STEPS=2.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-dataset}   # the prompt CSVs (shipped in dataset/); a folder of smaller copies for a quick run
STEPS=${STEPS:-50}      # denoising steps of every generation (validation, images, attacks)
OUT=${OUT:-runs/table3-art}
ARTIST=${ARTIST:-Kelly McKernan}

python execs/train_uce.py --concepts "$ARTIST" --concept_type art --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce"
python train.py --concepts "$ARTIST" --guided_concepts art --concept_type art --target_ckpt "$OUT/uce/uce.safetensors" --emb_computing close_regzero --regular_scale 1e-3 --epochs 1 --test_csv_path "$DATA"/validation_niche_artists.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/short_niche_art_prompts.csv --save_path "$OUT/niche-sd" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/short_niche_art_prompts.csv --save_path "$OUT/niche-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/compute_lpips.py --root "$OUT/niche-rece" --reference "$OUT/niche-sd" --device "$DEVICE"
python execs/classify_artists.py --root "$OUT/niche-rece" --target_artist "$ARTIST" --device "$DEVICE"
