"""Train one more MiniLM-recipe member of the bench/recipe_eval.py run in its own process (same config and split).

    python bench/recipe_member.py m2 2     # name, seed -> /tmp/quality-eval/extra/members/m2
"""

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from enclip_qdrant.progress import NullProgress
from enclip_qdrant.training import MemberJob, Pairs, _train_and_save, decode_image

torch.set_num_threads(1)
name, seed = sys.argv[1], int(sys.argv[2])
src = Path("/tmp/quality-eval/b5")
spec = json.loads((src / "members/m0/job.json").read_text())
dst = Path("/tmp/quality-eval/extra")
(dst / "members").mkdir(parents=True, exist_ok=True)
shutil.copy(src / "text_features.safetensors", dst / "text_features.safetensors")
images = [decode_image(p) for p in spec["images"]]
pairs = Pairs([str(i) for i in range(len(images))], images, spec["texts"])
job = MemberJob(name, name, seed, dst / "members" / name, np.asarray(spec["idx"]))
t = time.time()
r = _train_and_save(job, pairs, np.asarray(spec["val_idx"]), spec["cfg"], NullProgress())
print(name, "done", time.time() - t, r["val"], r["seconds"], flush=True)
