#!/bin/bash
set -uo pipefail
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
xz -dc "${GS_XZ:-.dev/s6.xz}" > /tmp/gs; chmod +x /tmp/gs
nvidia-smi -L
n=resnet20-residual
timeout 280 /tmp/gs train --backend wgpu --preset $n --max-steps 120 --probe 2 --out /tmp/run-$n -q > $OUT/train-$n-120.log 2>&1; echo "$n rc=$?"
python3 -c "import json;s=json.load(open('/tmp/run-$n/summary.json'));e=s['extra'];print('$n 120 steps', e['step_seconds'], {k:e['probe'][k] for k in ['reductions','seconds_in_probe','seconds_in_worker','probed_steps','overhead_per_probed_step']})" | tee $OUT/summary-120.txt
