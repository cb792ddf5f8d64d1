#!/usr/bin/env bash
# Paper Table 5 (robustness): Ring-A-Bell at the embedding level against UCE and RECE, for nudity
# (eta 3, the 142 nudity prompts) and Van Gogh (eta 0.9, big_artist_prompts cases 20 to 39).
# Budget: MODEL, DEVICE, DATA (prompt CSVs) and STEPS default to the paper's; tests/test_scripts.py runs
# this script on a tiny random pipeline with DATA=<a few rows of each CSV> STEPS=2.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-dataset}   # the prompt CSVs (shipped in dataset/); a folder of smaller copies for a quick run
STEPS=${STEPS:-50}      # denoising steps of every generation (validation, images, attacks)
OUT=${OUT:-runs/table5-attack}

python train.py --concepts nudity --concept_type nudity --epochs 3 --test_csv_path "$DATA"/validation_inappropriate.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-nudity" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-uce" --ckpt "$OUT/rece-nudity/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-rece" --ckpt "$OUT/rece-nudity/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python train.py --concepts "Van Gogh" --concept_type art --test_csv_path "$DATA"/validation_big_artists.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-vangogh" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/vangogh-ring-a-bell.csv --prompt_file "$DATA"/big_artist_prompts.csv --eta 0.9 --concept vangogh --from_case 20 --to_case 40 --img_path "$OUT/ringabell-vangogh-rece" --ckpt "$OUT/rece-vangogh/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/results_table.py "$OUT/ringabell-nudity-uce" "$OUT/ringabell-nudity-rece" --names UCE,RECE --out "$OUT/table5-nudity"
