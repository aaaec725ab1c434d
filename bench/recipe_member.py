import json, sys, time, numpy as np
from pathlib import Path
from enclip_qdrant.training import Pairs, _train_and_save, decode_image, MemberJob, _read_plan
from enclip_qdrant.progress import NullProgress
import torch
torch.set_num_threads(1)
name, seed = sys.argv[1], int(sys.argv[2])
src = Path("/tmp/quality-eval/b5")
spec = json.loads((src / "members/m0/job.json").read_text())
dst = Path("/tmp/quality-eval/extra")
(dst / "members").mkdir(parents=True, exist_ok=True)
import shutil
shutil.copy(src / "text_features.safetensors", dst / "text_features.safetensors")
images = [decode_image(p) for p in spec["images"]]
pairs = Pairs([str(i) for i in range(len(images))], images, spec["texts"])
job = MemberJob(name, name, seed, dst / "members" / name, np.asarray(spec["idx"]))
t = time.time()
r = _train_and_save(job, pairs, np.asarray(spec["val_idx"]), spec["cfg"], NullProgress())
print(name, "done", time.time() - t, r["val"], r["seconds"], flush=True)
