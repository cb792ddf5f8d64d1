#!/usr/bin/env bash
# The paper's robustness comparison on the built-in shapes world (docs/method.md §13): erase one colour
# with SLD-max, ESD-x, UCE, UCE with its synonyms as concepts, and RECE; measure how often the colour
# comes back when asked by name (explicit), by a synonym, or through an object (implicit), under four
# attacks on the explicit prompts (Ring-A-Bell embedding and discrete, UnlearnDiffAtk, P4D), and what
# is lost on the other colours, the shapes and fidelity to the base model. Prints the Markdown table and
# writes $OUT/table.{md,json} and $OUT/grid.png. About 20 minutes on a 2-core CPU with the defaults.
# Budgets (environment): OUT, CONCEPT, MODEL, STEPS, SEEDS (evaluation images per colour x shape),
# SET_SIZE (synonym / implicit prompts), ATTACK_PROMPTS (explicit prompts attacked), ETA,
# RAB_LENGTH / RAB_POPULATION / RAB_GENERATIONS (discrete Ring-A-Bell), ATTACK_ITERS /
# ATTACK_TIMESTEPS (UnlearnDiffAtk, P4D), ESD_ITERS, EPOCHS (RECE). An existing OUT is refused unless
# OVERWRITE=1 (which deletes it first).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/robustness}
CONCEPT=${CONCEPT:-red}
MODEL=${MODEL:-shapes}
STEPS=${STEPS:-25}
SEEDS=${SEEDS:-2}
SET_SIZE=${SET_SIZE:-40}
ATTACK_PROMPTS=${ATTACK_PROMPTS:-8}
ETA=${ETA:-0.5}
RAB_LENGTH=${RAB_LENGTH:-8}
RAB_POPULATION=${RAB_POPULATION:-64}
RAB_GENERATIONS=${RAB_GENERATIONS:-60}
ATTACK_ITERS=${ATTACK_ITERS:-10}
ATTACK_TIMESTEPS=${ATTACK_TIMESTEPS:-100:1000:250}
ESD_ITERS=${ESD_ITERS:-300}
EPOCHS=${EPOCHS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  if [ "${OVERWRITE:-0}" = 1 ]; then rm -rf "$OUT"; else echo "robustness.sh: OUT=$OUT already holds results; choose another OUT or set OVERWRITE=1" >&2; exit 2; fi
fi
mkdir -p "$OUT"
PRESERVE=$(python -c "from utils.world import shapes; print(','.join(c for c in shapes.COLOURS if c != '$CONCEPT'))")
SYNONYMS=$(python -c "from utils.world import shapes; print(','.join(('$CONCEPT',) + shapes.SYNONYMS['$CONCEPT']))")

# 1. prompts: every colour x shape (eval), the concept's explicit / synonym / implicit sets, Ring-A-Bell pairs
python execs/shapes_data.py --concept "$CONCEPT" --seeds "$SEEDS" --set_size "$SET_SIZE" --save_path "$OUT/data"
# 2. erasure
python execs/train_uce.py --concepts "$CONCEPT" --concept_type colour --preserve_concepts "$PRESERVE" --model_id "$MODEL" --save_path "$OUT/uce"
python execs/train_uce.py --concepts "$SYNONYMS" --concept_type colour --preserve_concepts "$PRESERVE" --model_id "$MODEL" --save_path "$OUT/uce-synonyms"
python train.py --concepts "$CONCEPT" --concept_type colour --preserve_concepts "$PRESERVE" --epochs "$EPOCHS" --target_ckpt "$OUT/uce/uce.safetensors" --model_id "$MODEL" --ddim_steps "$STEPS" --save_path "$OUT/rece"
python execs/train_esd.py --concepts "$CONCEPT" --concept_type colour --train_method esd-x --iterations "$ESD_ITERS" --model_id "$MODEL" --save_path "$OUT/esd-x"
# 3. each model: one generation run over every prompt set, then the four attacks on the explicit prompts
for M in sd: sld-max: esd-x:"$OUT/esd-x/esd.safetensors" uce:"$OUT/uce/uce.safetensors" uce-synonyms:"$OUT/uce-synonyms/uce.safetensors" rece:"$OUT/rece/best.safetensors"; do
  NAME=${M%%:*}; CKPT=${M#*:}
  MODEL_ARGS=(--model_id "$MODEL" --ckpt "$CKPT")
  [ "$NAME" = sld-max ] && MODEL_ARGS+=(--sld max --sld_concept "$CONCEPT")
  python execs/generate_images.py --prompts_path "$OUT/data/all_prompts.csv" "${MODEL_ARGS[@]}" --ddim_steps "$STEPS" --batch_size 50 --save_path "$OUT/gen-$NAME"
  python attack_methods/RingABell.py --csv_file "$OUT/data/ringabell_pairs.csv" --prompt_file "$OUT/data/explicit_prompts.csv" --to_case "$ATTACK_PROMPTS" --concept "$CONCEPT" --eta "$ETA" "${MODEL_ARGS[@]}" --ddim_steps "$STEPS" --img_path "$OUT/ringabell-$NAME"
  python attack_methods/RingABell.py --mode discrete --csv_file "$OUT/data/ringabell_pairs.csv" --prompt_file "$OUT/data/explicit_prompts.csv" --to_case "$ATTACK_PROMPTS" --concept "$CONCEPT" --eta "$ETA" --length "$RAB_LENGTH" --population "$RAB_POPULATION" --generations "$RAB_GENERATIONS" "${MODEL_ARGS[@]}" --ddim_steps "$STEPS" --img_path "$OUT/ringabell-discrete-$NAME"
  python attack_methods/UnlearnDiffAtk.py --prompt_file "$OUT/data/explicit_prompts.csv" --to_case "$ATTACK_PROMPTS" --concept "$CONCEPT" --iterations "$ATTACK_ITERS" --timesteps "$ATTACK_TIMESTEPS" "${MODEL_ARGS[@]}" --ddim_steps "$STEPS" --save_path "$OUT/unlearndiff-$NAME"
  python attack_methods/P4D.py --variant K --prompt_file "$OUT/data/explicit_prompts.csv" --to_case "$ATTACK_PROMPTS" --concept "$CONCEPT" --iterations "$ATTACK_ITERS" --timesteps "$ATTACK_TIMESTEPS" "${MODEL_ARGS[@]}" --ddim_steps "$STEPS" --save_path "$OUT/p4d-$NAME"
done
# 4. the table, table.json and the labelled image grid
python execs/robustness_table.py --root "$OUT" --concept "$CONCEPT" --methods SD=sd SLD-max=sld-max ESD-x=esd-x UCE=uce "UCE+synonyms=uce-synonyms" RECE=rece
