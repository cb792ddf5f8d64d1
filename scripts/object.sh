#!/usr/bin/env bash
# Paper Table 4 (Imagenette objects): UCE, then RECE for church / garbage truck (gamma 1e-3) and
# English springer / golf ball / parachute (gamma 0.1); ResNet-50 accuracy of the erased and other classes.
# Budget: MODEL, DEVICE, DATA (prompt CSVs) and STEPS default to the paper's; tests/test_scripts.py runs
# this script on a tiny random pipeline with DATA=<a few rows of each CSV> STEPS=2.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-dataset}   # the prompt CSVs (shipped in dataset/); a folder of smaller copies for a quick run
STEPS=${STEPS:-50}      # denoising steps of every generation (validation, images, attacks)
OUT=${OUT:-runs/table4-object}
OBJECT=${OBJECT:-church}

python execs/train_uce.py --concepts "$OBJECT" --concept_type object --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce-$OBJECT"
python train.py --concepts "$OBJECT" --concept_type object --target_ckpt "$OUT/uce-$OBJECT/uce.safetensors" --test_csv_path "$DATA"/validation_imagenet_prompts.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-$OBJECT" --ddim_steps "$STEPS"
python execs/generate_images.py --prompts_path "$DATA"/imagenette.csv --save_path "$OUT/imagenette-rece-$OBJECT" --ckpt "$OUT/rece-$OBJECT/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/classify_objects.py --root "$OUT/imagenette-rece-$OBJECT" --target_class "$OBJECT" --device "$DEVICE"
