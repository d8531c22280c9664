"""Print the README's table of shipped weights (Markdown) from their metadata files.

The numbers in the metadata were measured by scripts/ship_weights.py from the shipped files;
tests/models/test_zoo.py re-measures the JPEG test top-1.
"""

from dyve import models
from dyve.cost import static_cost

print(
    "| model | MACs/image | params | top-1 cifar10-jpeg test | top-1 exact test (1,017) "
    "| top-1 val | trained from |"
)
print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
for name in models.shipped_models():
    meta = models.shipped_meta(name)
    net = models.create(name)
    macs = static_cost(net).total_macs / 1e6
    params = sum(p.numel() for p in net.parameters()) / 1e6
    val = f"{meta['val_top1']:.2f}" + ("" if meta.get("val_heldout", True) else "†")
    start = "akamaster weights" if meta["config"]["init"] else "scratch"
    print(
        f"| `{name}` | {macs:.1f} M | {params:.2f} M | {meta['test_top1']:.2f} "
        f"| {meta['exact_test_top1']:.2f} | {val} | {start}, {meta['config']['epochs']} epochs |"
    )
