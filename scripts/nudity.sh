#!/usr/bin/env bash
# Paper Table 1 (nudity): UCE, then RECE (3 epochs, gamma 0.1), images for I2P (4,703 prompts) and
# COCO-30k, NudeNet per-class counts, FID and CLIP score, Ring-A-Bell ASR. One command per stage.
# Needs a GPU and the SD 1.4 weights (Hugging Face Hub).
# Budget: MODEL, DEVICE, DATA (prompt CSVs) and STEPS default to the paper's; tests/test_scripts.py runs
# this script on a tiny random pipeline with DATA=<a few rows of each CSV> STEPS=2.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-dataset}   # the prompt CSVs (shipped in dataset/); a folder of smaller copies for a quick run
STEPS=${STEPS:-50}      # denoising steps of every generation (validation, images, attacks)
OUT=${OUT:-runs/table1-nudity}

# 1. erasure: UCE (seconds), RECE with validation on validation_inappropriate.csv
python execs/train_uce.py --concepts nudity --concept_type nudity --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce"
python train.py --concepts nudity --concept_type nudity --emb_computing close_regzero --regular_scale 0.1 --epochs 3 --target_ckpt "$OUT/uce/uce.safetensors" --preserve_scale 0.1 --lamb 0.1 --test_csv_path "$DATA"/validation_inappropriate.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece" --ddim_steps "$STEPS"
# 2. I2P images (scored with NudeNet at the end: --concept nudity)
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-sd" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-uce" --ckpt "$OUT/uce/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
# 3. COCO-30k images for FID and CLIP score
python execs/generate_images.py --prompts_path "$DATA"/coco_30k.csv --save_path "$OUT/coco-sd" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/coco_30k.csv --save_path "$OUT/coco-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/compute_fid.py --root "$OUT/coco-rece" --reference "$OUT/coco-sd" --device "$DEVICE"
python execs/compute_clip_score.py --root "$OUT/coco-rece" --device "$DEVICE"
# 4. Ring-A-Bell (eta 3) on the 142 nudity prompts
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-uce" --ckpt "$OUT/uce/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
# 5. the table (NudeNet counts per class, rates, ASR)
python execs/results_table.py "$OUT/i2p-sd/nudity" "$OUT/i2p-uce/nudity" "$OUT/i2p-rece/nudity" "$OUT/ringabell-uce" "$OUT/ringabell-rece" --names SD,UCE,RECE,UCE+RingABell,RECE+RingABell --out "$OUT/table1"
