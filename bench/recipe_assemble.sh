#!/bin/bash
# usage: quality-assemble.sh N  -> /tmp/quality-eval/b$N from m0..m(N-1) (b5 or extra), clusters refitted, evaluated
set -e
N=$1; W=/tmp/quality-eval; D=$W/b$N
rm -rf $D; mkdir -p $D/members
cp $W/b5/training.json $W/b5/text_features.safetensors $D/
for i in $(seq 0 $((N-1))); do
  if [ -f $W/b5/members/m$i/report.json ]; then cp -r $W/b5/members/m$i $D/members/; else cp -r $W/extra/members/m$i $D/members/; fi
done
cd /work/wt-quality
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python bench/recipe_eval.py /work/shared/data/fashion-dev --work $W --members $N --subsets --text-encoder minilm
