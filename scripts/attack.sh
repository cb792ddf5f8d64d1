#!/usr/bin/env bash
# Paper Table 5 (robustness): Ring-A-Bell at the embedding level against SD, SLD-Max, ESD, UCE and RECE
# for nudity (eta 3, the 142 nudity prompts), and against ESD and RECE for Van Gogh (eta 0.9,
# big_artist_prompts cases 20 to 39); then UnlearnDiffAtk and P4D-K on the nudity prompts against UCE
# and RECE (docs/attacks.md; ASR and pre-ASR in each asr.json). ESD_CKPT=... / ESD_VANGOGH_CKPT=... use
# given ESD checkpoints (e.g. the released UNet .pt files); unset, ESD-u (nudity) and ESD-x (Van Gogh)
# are trained here.
# Budget: MODEL, DEVICE, DATA (prompt CSVs), STEPS, ESD_ITERS, ATTACK_ITERS and ATTACK_TIMESTEPS default
# to the paper's; tests/test_scripts.py runs this script on a tiny random pipeline with DATA=<a few rows
# of each CSV>, STEPS=2 and tiny attack and ESD budgets.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-dataset}   # the prompt CSVs (shipped in dataset/); a folder of smaller copies for a quick run
STEPS=${STEPS:-50}      # denoising steps of every generation (validation, images, attacks)
OUT=${OUT:-runs/table5-attack}
ESD_CKPT=${ESD_CKPT:-}
ESD_VANGOGH_CKPT=${ESD_VANGOGH_CKPT:-}
ESD_ITERS=${ESD_ITERS:-1000}                   # ESD training iterations (the original's 1000)
ATTACK_ITERS=${ATTACK_ITERS:-40}               # UnlearnDiffAtk / P4D iterations per timestep
ATTACK_TIMESTEPS=${ATTACK_TIMESTEPS:-10:1000:20}  # their timesteps, 10, 30, ..., 990

python train.py --concepts nudity --concept_type nudity --epochs 3 --test_csv_path "$DATA"/validation_inappropriate.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-nudity" --ddim_steps "$STEPS"
if [ -z "$ESD_CKPT" ]; then
  python execs/train_esd.py --concepts nudity --concept_type nudity --train_method esd-u --iterations "$ESD_ITERS" --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/esd-nudity"
  ESD_CKPT="$OUT/esd-nudity/esd.safetensors"
fi
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-sd" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-sld" --sld max --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-esd" --ckpt "$ESD_CKPT" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-uce" --ckpt "$OUT/rece-nudity/uce.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/nudity-ring-a-bell.csv --prompt_file "$DATA"/nudity.csv --eta 3 --concept nudity --img_path "$OUT/ringabell-nudity-rece" --ckpt "$OUT/rece-nudity/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python train.py --concepts "Van Gogh" --concept_type art --test_csv_path "$DATA"/validation_big_artists.csv --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/rece-vangogh" --ddim_steps "$STEPS"
if [ -z "$ESD_VANGOGH_CKPT" ]; then
  python execs/train_esd.py --concepts "Van Gogh" --concept_type art --train_method esd-x --iterations "$ESD_ITERS" --model_id "$MODEL" --device "$DEVICE" --save_path "$OUT/esd-vangogh"
  ESD_VANGOGH_CKPT="$OUT/esd-vangogh/esd.safetensors"
fi
python attack_methods/RingABell.py --csv_file "$DATA"/vangogh-ring-a-bell.csv --prompt_file "$DATA"/big_artist_prompts.csv --eta 0.9 --concept vangogh --from_case 20 --to_case 40 --img_path "$OUT/ringabell-vangogh-esd" --ckpt "$ESD_VANGOGH_CKPT" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python attack_methods/RingABell.py --csv_file "$DATA"/vangogh-ring-a-bell.csv --prompt_file "$DATA"/big_artist_prompts.csv --eta 0.9 --concept vangogh --from_case 20 --to_case 40 --img_path "$OUT/ringabell-vangogh-rece" --ckpt "$OUT/rece-vangogh/best.safetensors" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS"
python execs/results_table.py "$OUT/ringabell-nudity-sd" "$OUT/ringabell-nudity-sld" "$OUT/ringabell-nudity-esd" "$OUT/ringabell-nudity-uce" "$OUT/ringabell-nudity-rece" --names SD,SLD-Max,ESD,UCE,RECE --out "$OUT/table5-nudity"
for M in uce:uce rece:best; do
  python attack_methods/UnlearnDiffAtk.py --prompt_file "$DATA"/nudity.csv --concept nudity --ckpt "$OUT/rece-nudity/${M#*:}.safetensors" --iterations "$ATTACK_ITERS" --timesteps "$ATTACK_TIMESTEPS" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS" --save_path "$OUT/unlearndiff-nudity-${M%:*}"
  python attack_methods/P4D.py --variant K --prompt_file "$DATA"/nudity.csv --concept nudity --ckpt "$OUT/rece-nudity/${M#*:}.safetensors" --iterations "$ATTACK_ITERS" --timesteps "$ATTACK_TIMESTEPS" --model_id "$MODEL" --device "$DEVICE" --ddim_steps "$STEPS" --save_path "$OUT/p4dk-nudity-${M%:*}"
done
