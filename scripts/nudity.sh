#!/usr/bin/env bash
# Paper Table 1 (nudity): SD, SLD-Max, ESD, UCE, RECE (3 epochs, gamma 0.1): images for I2P (4,703
# prompts) and COCO-30k, NudeNet per-class counts, FID and CLIP score, Ring-A-Bell ASR. One command per
# stage. Needs a GPU and the SD 1.4 weights (Hugging Face Hub). Override with MODEL=... OUT=... DEVICE=...
# ESD: ESD_CKPT=path uses a checkpoint (the released ESD-u UNet .pt, or ours); unset, ESD-u is trained here.
# COCO_DIR=... (a local COCO image folder) gives the paper's FID reference.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
OUT=${OUT:-runs/table1-nudity}
DEVICE=${DEVICE:-cuda}
ESD_CKPT=${ESD_CKPT:-}

# 1. data
python dataset/fetch.py i2p.csv coco_30k.csv nudity.csv nudity-ring-a-bell.csv validation_inappropriate.csv
# 2. erasure: UCE (seconds), RECE with validation on validation_inappropriate.csv
python execs/train_uce.py --concepts nudity --concept_type nudity --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce"
python train.py --concepts nudity --concept_type nudity --emb_computing close_regzero --regular_scale 0.1 --epochs 3 --target_ckpt "$OUT/uce/uce.safetensors" --preserve_scale 0.1 --lamb 0.1 --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece"
# ESD-u on "nudity" with the original's settings (1000 iterations, lr 1e-5, eta 1), unless ESD_CKPT is given
if [ -z "$ESD_CKPT" ]; then
  python execs/train_esd.py --concepts nudity --concept_type nudity --train_method esd-u --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/esd"
  ESD_CKPT="$OUT/esd/esd.safetensors"
fi
# 3. I2P images (scored with NudeNet at the end: --concept nudity)
python execs/generate_images.py --prompts_path dataset/i2p.csv --concept nudity --save_path "$OUT/i2p-sd" --model_id "$MODEL" --device "$DEVICE" --empty_prompts skip
python execs/generate_images.py --prompts_path dataset/i2p.csv --concept nudity --save_path "$OUT/i2p-sld" --sld max --model_id "$MODEL" --device "$DEVICE" --empty_prompts skip
python execs/generate_images.py --prompts_path dataset/i2p.csv --concept nudity --save_path "$OUT/i2p-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE" --empty_prompts skip
python execs/generate_images.py --prompts_path dataset/i2p.csv --concept nudity --save_path "$OUT/i2p-uce" --ckpt "$OUT/uce/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --empty_prompts skip
python execs/generate_images.py --prompts_path dataset/i2p.csv --concept nudity --save_path "$OUT/i2p-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --empty_prompts skip
# 4. COCO-30k images for FID and CLIP score
python execs/generate_images.py --prompts_path dataset/coco_30k.csv --save_path "$OUT/coco-sd" --model_id "$MODEL" --device "$DEVICE"
python execs/generate_images.py --prompts_path dataset/coco_30k.csv --save_path "$OUT/coco-sld" --sld max --model_id "$MODEL" --device "$DEVICE"
python execs/generate_images.py --prompts_path dataset/coco_30k.csv --save_path "$OUT/coco-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE"
python execs/generate_images.py --prompts_path dataset/coco_30k.csv --save_path "$OUT/coco-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE"
# FID as in the paper: against the real COCO images of the 30k captions, taken from your local COCO
# download (COCO_DIR=/path/to/coco, 2014 or 2017 images; nothing is downloaded). FID against SD 1.4's
# own images is the second, differently named number (fid_vs_coco-sd.json).
if [ -n "${COCO_DIR:-}" ]; then
  python dataset/select_coco30k.py --coco_dir "$COCO_DIR" --prompts_path dataset/coco_30k.csv --save_path "$OUT/coco30k_real"
fi
for m in sld esd rece; do
  if [ -n "${COCO_DIR:-}" ]; then
    python execs/compute_fid.py --root "$OUT/coco-$m" --reference "$OUT/coco30k_real" --device "$DEVICE"
  fi
  python execs/compute_fid.py --root "$OUT/coco-$m" --reference "$OUT/coco-sd" --device "$DEVICE"
  python execs/compute_clip_score.py --root "$OUT/coco-$m" --device "$DEVICE"
done
[ -n "${COCO_DIR:-}" ] || echo "COCO_DIR is not set: skipped the paper's FID (against real COCO images); set COCO_DIR to a local COCO image folder" >&2
# 5. Ring-A-Bell (eta 3) on the 142 nudity prompts
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-sld" --sld max --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-uce" --ckpt "$OUT/uce/uce.safetensors" --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-rece" --ckpt "$OUT/rece/best.safetensors" --model_id "$MODEL" --device "$DEVICE"
# 6. the table (NudeNet counts per class, rates, ASR)
python execs/results_table.py "$OUT/i2p-sd/nudity" "$OUT/i2p-sld/nudity" "$OUT/i2p-esd/nudity" "$OUT/i2p-uce/nudity" "$OUT/i2p-rece/nudity" "$OUT/ringabell-sld" "$OUT/ringabell-esd" "$OUT/ringabell-uce" "$OUT/ringabell-rece" --names SD,SLD-Max,ESD,UCE,RECE,SLD-Max+RingABell,ESD+RingABell,UCE+RingABell,RECE+RingABell --out "$OUT/table1"
