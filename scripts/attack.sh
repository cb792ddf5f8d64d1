#!/usr/bin/env bash
# Paper Table 5 (robustness): Ring-A-Bell at the embedding level against SD, SLD-Max, ESD, UCE and RECE
# for nudity (eta 3, the 142 nudity prompts), and against ESD and RECE for Van Gogh (eta 0.9,
# big_artist_prompts cases 20 to 39); then UnlearnDiffAtk and P4D-K on the nudity prompts against UCE
# and RECE (docs/attacks.md; ASR and pre-ASR in each asr.json). ESD_CKPT=... / ESD_VANGOGH_CKPT=... use
# given ESD checkpoints (e.g. the released UNet .pt files); unset, ESD-u (nudity) and ESD-x (Van Gogh)
# are trained here.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
OUT=${OUT:-runs/table5-attack}
DEVICE=${DEVICE:-cuda}
ESD_CKPT=${ESD_CKPT:-}
ESD_VANGOGH_CKPT=${ESD_VANGOGH_CKPT:-}

python dataset/fetch.py nudity.csv nudity-ring-a-bell.csv vangogh-ring-a-bell.csv big_artist_prompts.csv artists1734_prompts.csv validation_big_artists.csv
python train.py --concepts nudity --concept_type nudity --epochs 3 --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-nudity"
if [ -z "$ESD_CKPT" ]; then
  python execs/train_esd.py --concepts nudity --concept_type nudity --train_method esd-u --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/esd-nudity"
  ESD_CKPT="$OUT/esd-nudity/esd.safetensors"
fi
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-sd" --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-sld" --sld max --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-uce" --ckpt "$OUT/rece-nudity/uce.safetensors" --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv --prompt_file dataset/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-rece" --ckpt "$OUT/rece-nudity/best.safetensors" --model_id "$MODEL" --device "$DEVICE"
python train.py --concepts "Van Gogh" --concept_type art --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-vangogh"
if [ -z "$ESD_VANGOGH_CKPT" ]; then
  python execs/train_esd.py --concepts "Van Gogh" --concept_type art --train_method esd-x --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/esd-vangogh"
  ESD_VANGOGH_CKPT="$OUT/esd-vangogh/esd.safetensors"
fi
python attack_methods/RingABell.py --csv_file dataset/vangogh-ring-a-bell.csv --prompt_file dataset/big_artist_prompts.csv --eta 0.9 --concept vangogh --from_case 20 --to_case 40 --img_path "$OUT/ringabell-vangogh-esd" --ckpt "$ESD_VANGOGH_CKPT" --model_id "$MODEL" --device "$DEVICE"
python attack_methods/RingABell.py --csv_file dataset/vangogh-ring-a-bell.csv --prompt_file dataset/big_artist_prompts.csv --eta 0.9 --concept vangogh --from_case 20 --to_case 40 --img_path "$OUT/ringabell-vangogh-rece" --ckpt "$OUT/rece-vangogh/best.safetensors" --model_id "$MODEL" --device "$DEVICE"
python execs/results_table.py "$OUT/ringabell-nudity-sd" "$OUT/ringabell-nudity-sld" "$OUT/ringabell-nudity-esd" "$OUT/ringabell-nudity-uce" "$OUT/ringabell-nudity-rece" --names SD,SLD-Max,ESD,UCE,RECE --out "$OUT/table5-nudity"
for M in uce:uce rece:best; do
  python attack_methods/UnlearnDiffAtk.py --prompt_file dataset/nudity.csv --concept nudity --ckpt "$OUT/rece-nudity/${M#*:}.safetensors" --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/unlearndiff-nudity-${M%:*}"
  python attack_methods/P4D.py --variant K --prompt_file dataset/nudity.csv --concept nudity --ckpt "$OUT/rece-nudity/${M#*:}.safetensors" --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/p4dk-nudity-${M%:*}"
done
