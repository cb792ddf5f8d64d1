#!/usr/bin/env bash
# Paper Table 3 (artistic styles): erase one artist with UCE (the 1,733 others preserved), then
# RECE (1 epoch, gamma 1e-3); generate the artist prompts; LPIPS against SD, CLIP style classification.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
OUT=${OUT:-runs/table3-art}
DEVICE=${DEVICE:-cuda}
ARTIST=${ARTIST:-Kelly McKernan}

python dataset/fetch.py artists1734_prompts.csv short_niche_art_prompts.csv big_artist_prompts.csv validation_niche_artists.csv validation_big_artists.csv
python execs/train_uce.py --concepts "$ARTIST" --concept_type art --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce"
python train.py --concepts "$ARTIST" --guided_concepts art --concept_type art --target_ckpt "$OUT/uce/uce.safetensors" --emb_computing close_regzero --regular_scale 1e-3 --epochs 1 --test_csv_path dataset/validation_niche_artists.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece"
python execs/generate_images.py --prompts_path dataset/short_niche_art_prompts.csv --save_path "$OUT/niche-sd" --model_id "$MODEL" --device "$DEVICE"
python execs/generate_images.py --prompts_path dataset/short_niche_art_prompts.csv --save_path "$OUT/niche-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE"
python execs/compute_lpips.py --root "$OUT/niche-rece" --reference "$OUT/niche-sd" --device "$DEVICE"
python execs/classify_artists.py --root "$OUT/niche-rece" --target_artist "$ARTIST" --device "$DEVICE"
