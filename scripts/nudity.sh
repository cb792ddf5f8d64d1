#!/usr/bin/env bash
# Paper Table 1 (nudity): SD, SLD-Max, ESD, UCE, RECE (3 epochs, gamma 0.1): images for I2P (4,703
# prompts) and COCO-30k, NudeNet per-class counts, FID and CLIP score, Ring-A-Bell ASR. One command per
# stage. Needs a GPU and the SD 1.4 weights (Hugging Face Hub).
# ESD: ESD_CKPT=path uses a checkpoint (the released ESD-u UNet .pt, or ours); unset, ESD-u is trained here.
# COCO_DIR=... (a local COCO image folder) gives the paper's FID reference (real COCO images).
# Budget: MODEL, DEVICE, DATA (prompt CSVs), STEPS and ESD_ITERS default to the paper's;
# tests/test_scripts.py runs this script on a tiny random pipeline with DATA=<a few rows of each CSV>,
# STEPS=2, ESD_ITERS=2.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-dataset}   # the prompt CSVs (shipped in dataset/); a folder of smaller copies for a quick run
STEPS=${STEPS:-50}      # denoising steps of every generation (validation, images, attacks)
OUT=${OUT:-runs/table1-nudity}
ESD_CKPT=${ESD_CKPT:-}
ESD_ITERS=${ESD_ITERS:-1000}  # ESD training iterations (the original's 1000)

# 1. erasure: UCE (seconds), RECE with validation on validation_inappropriate.csv, ESD-u unless ESD_CKPT
python execs/train_uce.py --concepts nudity --concept_type nudity --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce"
python train.py --concepts nudity --concept_type nudity --emb_computing close_regzero --regular_scale 0.1 --epochs 3 --target_ckpt "$OUT/uce/uce.safetensors" --preserve_scale 0.1 --lamb 0.1 --test_csv_path "$DATA"/validation_inappropriate.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece" --ddim_steps "$STEPS"
if [ -z "$ESD_CKPT" ]; then
  python execs/train_esd.py --concepts nudity --concept_type nudity --train_method esd-u --iterations "$ESD_ITERS" --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/esd"
  ESD_CKPT="$OUT/esd/esd.safetensors"
fi
# 2. I2P images (scored with NudeNet at the end: --concept nudity)
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-sd" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-sld" --sld max --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-uce" --ckpt "$OUT/uce/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/i2p.csv --concept nudity --save_path "$OUT/i2p-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
# 3. COCO-30k images for FID and CLIP score
python execs/generate_images.py --prompts_path "$DATA"/coco_30k.csv --save_path "$OUT/coco-sd" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/coco_30k.csv --save_path "$OUT/coco-sld" --sld max --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/coco_30k.csv --save_path "$OUT/coco-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/coco_30k.csv --save_path "$OUT/coco-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
# FID as in the paper: against the real COCO images of the 30k captions, taken from your local COCO
# download (COCO_DIR=/path/to/coco, 2014 or 2017 images; nothing is downloaded). FID against SD 1.4's
# own images is the second, differently named number (fid_vs_coco-sd.json).
if [ -n "${COCO_DIR:-}" ]; then
  python dataset/select_coco30k.py --coco_dir "$COCO_DIR" --prompts_path "$DATA"/coco_30k.csv --save_path "$OUT/coco30k_real"
fi
for m in sld esd rece; do
  if [ -n "${COCO_DIR:-}" ]; then
    python execs/compute_fid.py --root "$OUT/coco-$m" --reference "$OUT/coco30k_real" --device "$DEVICE"
  fi
  python execs/compute_fid.py --root "$OUT/coco-$m" --reference "$OUT/coco-sd" --device "$DEVICE"
  python execs/compute_clip_score.py --root "$OUT/coco-$m" --device "$DEVICE"
done
[ -n "${COCO_DIR:-}" ] || echo "COCO_DIR is not set: skipped the paper's FID (against real COCO images); set COCO_DIR to a local COCO image folder" >&2
# 4. Ring-A-Bell (eta 3) on the 142 nudity prompts
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-sld" --sld max --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-uce" --ckpt "$OUT/uce/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
# 5. the table (NudeNet counts per class, rates, ASR)
python execs/results_table.py "$OUT/i2p-sd/nudity" "$OUT/i2p-sld/nudity" "$OUT/i2p-esd/nudity" "$OUT/i2p-uce/nudity" "$OUT/i2p-rece/nudity" "$OUT/ringabell-sld" "$OUT/ringabell-esd" "$OUT/ringabell-uce" "$OUT/ringabell-rece" --names SD,SLD-Max,ESD,UCE,RECE,SLD-Max+RingABell,ESD+RingABell,UCE+RingABell,RECE+RingABell --out "$OUT/table1"
