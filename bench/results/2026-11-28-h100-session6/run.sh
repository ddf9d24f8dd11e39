#!/bin/bash
# Session 6: the final binary on an H100 (wgpu). MLP: bench blocks (host reads);
# ResNet-20: trainer's probed/unprobed medians with --probe 2 (auto -> device reductions).
set -uo pipefail
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
xz -dc "${GS_XZ:-.dev/s6.xz}" > /tmp/gs; chmod +x /tmp/gs
nvidia-smi -L; nproc
timeout 150 /tmp/gs bench --child mlp-sigmoid-8x256:wgpu:1:blocks --skip-idx --steps 100 --reps 3 --batch-size 128 > $OUT/mlp.json 2> $OUT/mlp.err || { echo "mlp failed"; tail -3 $OUT/mlp.err; }
python3 "$(dirname "$0")/est.py" 3 $OUT/mlp.json | tee $OUT/summary.txt
for p in mlp-sigmoid-8x256:300 resnet20-residual:40; do n=${p%%:*}; s=${p##*:}
  timeout 200 /tmp/gs train --backend wgpu --preset $n --max-steps $s --probe 2 --out /tmp/run-$n -q > $OUT/train-$n.log 2>&1; echo "$n rc=$?"
  python3 -c "import json;s=json.load(open('/tmp/run-$n/summary.json'));e=s['extra'];print('$n', e['step_seconds'], {k:e['probe'][k] for k in ['reductions','seconds_in_probe','seconds_in_worker','probed_steps','overhead_per_probed_step']})" | tee -a $OUT/summary.txt
done
