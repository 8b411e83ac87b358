"""PaDiM's memory does not grow with the number of images it has learned.

The reference implementations keep every embedding until the fit (anomalib: ~1.6 MB
per 224 px image for ResNet18), which is how users end up with 50-130 GB allocations.
padim keeps per-position sufficient statistics instead, so the peak resident memory
after 5,000 images must be that after 200.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FIRST_IMAGES = 200
TOTAL_IMAGES = 5_000
BATCH = 25  # divides both counts, so the two readings fall on batch boundaries
SIZE = 64  # a 16x16 patch grid: 5,000 random-init images take seconds
TOLERANCE = 0.05

# Runs in a fresh interpreter: ru_maxrss is a per-process high-water mark, and this
# test's own process has already held whatever other tests allocated.
_CHILD = """
import json, resource, sys
import torch
from padim import PaDiM

size, batch, first, total = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(1)  # the test machine is shared; memory does not depend on threads
model = PaDiM(backbone="resnet18", weights="none", num_embeddings=100, size=size, seed=0)
generator = torch.Generator().manual_seed(0)
peaks = {}
for seen in range(batch, total + 1, batch):
    model.train_one_batch(torch.rand(batch, 3, size, size, generator=generator))
    if seen in (first, total):
        peaks[seen] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"peak_first": peaks[first], "peak_total": peaks[total],
                  "num_trained": model.num_trained, "state_bytes": model.state_bytes()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the resource module is POSIX-only")
def test_peak_memory_after_5000_images_is_that_after_200() -> None:
    """Peak RSS after 5,000 training images is within 5% of the peak after 200.

    Measured (Linux, torch 2.15, CPU): 774.2 MiB after 200 images, 776.4 MiB after
    5,000 (+0.3%). Sensitivity: a model that kept each image's embeddings, as the
    reference implementations do, would hold 16 x 16 positions x 100 channels x 4 bytes
    = 100 KiB per image here, 4,800 x 100 KiB = 470 MiB more after 5,000 images, against
    a 5% allowance of about 39 MiB: it fails by a factor of twelve. A leak of 8 KiB per
    image already fails.
    """
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(SIZE), str(BATCH), str(FIRST_IMAGES), str(TOTAL_IMAGES)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # A model that learned nothing would trivially use constant memory.
    assert figures["num_trained"] == TOTAL_IMAGES
    growth = figures["peak_total"] / figures["peak_first"] - 1.0
    assert growth <= TOLERANCE, (
        f"peak RSS grew {growth:.1%} from {FIRST_IMAGES} to {TOTAL_IMAGES} images "
        f"({figures['peak_first'] / 1024:.0f} -> {figures['peak_total'] / 1024:.0f} MiB)"
    )
