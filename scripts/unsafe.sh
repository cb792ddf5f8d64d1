#!/usr/bin/env bash
# Paper Table 2 (unsafe concepts of I2P): UCE then RECE (2 epochs, gamma 0.1) on the 11 I2P
# categories; I2P images scored with Q16 (CLIP ViT-L/14, the fine-tuned prompts of the paper's evaluation)
# and NudeNet. One command per stage.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
OUT=${OUT:-runs/table2-unsafe}
DEVICE=${DEVICE:-cuda}

python dataset/fetch.py i2p.csv validation_inappropriate.csv q16_vit_l14_prompts.npy q16_vit_l14_prompts_finetuned.npy
python execs/train_uce.py --concepts i2p --concept_type unsafe --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce"
python train.py --concepts i2p --concept_type unsafe --emb_computing close_regzero --regular_scale 0.1 --epochs 2 --target_ckpt "$OUT/uce/uce.safetensors" --preserve_scale 0.1 --lamb 0.1 --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece"
python execs/generate_images.py --prompts_path dataset/i2p.csv --concept nudity --save_path "$OUT/i2p-sd" --model_id "$MODEL" --device "$DEVICE" --empty_prompts skip
python execs/generate_images.py --prompts_path dataset/i2p.csv --concept nudity --save_path "$OUT/i2p-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --empty_prompts skip
python execs/compute_q16.py --root "$OUT/i2p-sd/nudity" --device "$DEVICE"
python execs/compute_q16.py --root "$OUT/i2p-rece/nudity" --device "$DEVICE"
python execs/results_table.py "$OUT/i2p-sd/nudity" "$OUT/i2p-rece/nudity" --names SD,RECE --out "$OUT/table2"
