"""Reads a run's TensorBoard events with TensorBoard's own EventAccumulator and
prints them as JSON: {"scalars": {tag: [[step, value], ...]},
"histograms": {tag: [[step, num, min, max], ...]}}. Used by tests/tensorboard.rs."""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "histograms": 0})
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "histograms": {
        t: [[e.step, e.histogram_value.num, e.histogram_value.min, e.histogram_value.max] for e in acc.Histograms(t)]
        for t in tags["histograms"]
    },
}
json.dump(out, sys.stdout)
