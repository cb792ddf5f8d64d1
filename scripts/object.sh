#!/usr/bin/env bash
# Paper Table 4 (Imagenette objects): UCE, then RECE for church / garbage truck (gamma 1e-3) and
# English springer / golf ball / parachute (gamma 0.1); ResNet-50 accuracy of the erased and other classes.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
OUT=${OUT:-runs/table4-object}
DEVICE=${DEVICE:-cuda}
OBJECT=${OBJECT:-church}

python dataset/fetch.py imagenette.csv validation_imagenet_prompts.csv
python execs/train_uce.py --concepts "$OBJECT" --concept_type object --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/uce-$OBJECT"
python train.py --concepts "$OBJECT" --concept_type object --target_ckpt "$OUT/uce-$OBJECT/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-$OBJECT"
python execs/generate_images.py --prompts_path dataset/imagenette.csv --save_path "$OUT/imagenette-rece-$OBJECT" --ckpt "$OUT/rece-$OBJECT/best.safetensors" --model_id "$MODEL" --device "$DEVICE"
python execs/classify_objects.py --root "$OUT/imagenette-rece-$OBJECT" --target_class "$OBJECT" --device "$DEVICE"
